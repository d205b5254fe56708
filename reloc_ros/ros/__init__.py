"""ROS 2 side of reloc_ros (the only package that imports rclpy).

- ``localizer_node``: lifecycle node ``reloc_localizer`` (images -> ~/pose, /tf map->odom, ~/status, /diagnostics)
- ``mapper_node``: node ``reloc_mapper`` (posed keyframes -> 7-Scenes folder, ~/build_map)
- ``runner``: ``reloc-launch`` and ``start_localizer`` / ``start_mapper`` (nodes as subprocesses, lifecycle driving)
- ``tf_buffer``: time-indexed TF buffer (pure Python) + /tf listener; ``conversions``: message <-> core types;
  ``qos``: QoS profiles; ``params``: parameter tables (documented in config/*.yaml).
"""
