"""Front end A: implicit scene geometry from poses (MobileNetV3 + weighted Kabsch), after Altillawi et al.

Mapping: ``from reloc_ros.frontends.implicit.train import train, DEFAULT_CONF, CONF_HELP``.
Inference: ``from reloc_ros.frontends.implicit.frontend import ImplicitFrontEnd, load_implicit_map``.
(The package itself imports nothing heavy.)
"""
