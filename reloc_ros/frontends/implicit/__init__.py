"""Front end A: implicit scene geometry from poses (MobileNetV3 + weighted Kabsch), after Altillawi et al.

Mapping: ``from reloc_ros.frontends.implicit.train import train, DEFAULT_CONF, CONF_HELP``.
Inference: ``from reloc_ros.frontends.implicit.frontend import ImplicitFrontEnd, load_implicit_map``.
(The package itself imports nothing heavy.)
"""
from ..registry import FrontEndSpec

# This front end's poses are often 10-50 cm off, outside the LM's basin, so the refinement also starts from a PnP
# pose on feature matches of 512 reference points (7-Scenes: 67.0 % -> 75.8 % within 5 cm/5°, refinement 27 ms;
# 1024 points: 77.0 % at 30 ms; benchmarks/RESULTS.md, fifth session).
SPEC = FrontEndSpec("implicit", "reloc_ros.frontends.implicit.frontend:ImplicitFrontEnd",
                    "reloc_ros.frontends.implicit.train",
                    summary="implicit scene geometry: MobileNetV3 depth + weights, weighted Kabsch (poses only)",
                    support="weight_mass", refiner_defaults={"match_init": "compete", "match_max_points": 512},
                    backends=("torch", "onnxruntime"))
