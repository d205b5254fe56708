"""Evaluation: ``reloc-eval`` (offline, ``offline.evaluate``), ``reloc-eval-bag`` (rosbag replay through the live
node, ``bag_replay.run_bag_replay``), and their pure parts: stamp matching, replay metrics, NEES, plots, reports.
Nothing here imports rclpy (the ROS half of the replay is ``reloc_ros.ros.bag_player`` / ``eval_collector``)."""
