"""Command-line entry points (read by setup.py and by scripts/setup_env.sh, which writes venv wrappers)."""
CONSOLE_SCRIPTS = {
    "reloc-map": "reloc_ros.mapping.cli:main",
    "reloc-calibrate": "reloc_ros.mapping.calibrate:main",
    "reloc-export": "reloc_ros.export:main",
    "reloc-eval": "reloc_ros.evaluation.offline:main",
    "reloc-eval-bag": "reloc_ros.evaluation.bag_replay:main",
    "reloc-bag-from-dataset": "reloc_ros.datasets.bag_writer:main",
    "reloc-demo-scene": "reloc_ros.demo_scene:main",
    "reloc-demo": "reloc_ros.demo:main",
    "reloc-localizer": "reloc_ros.ros.localizer_node:main",
    "reloc-mapper": "reloc_ros.ros.mapper_node:main",
    "reloc-launch": "reloc_ros.ros.runner:main",
}
