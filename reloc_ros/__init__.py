"""reloc_ros: visual relocalization for ROS 2. Everything except ``reloc_ros.ros`` is pure Python (no rclpy).

The generated messages (``reloc_ros.msg``) are installed into site-packages under the same package name; both halves
extend ``__path__`` so that the sources and the generated code import as one package.
"""
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

__version__ = "0.1.0"
