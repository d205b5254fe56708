"""The pure core must import without rclpy: every module outside reloc_ros/ros/ is imported in a fresh interpreter
where importing rclpy raises."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def core_modules():
    mods = []
    for p in sorted((REPO / "reloc_ros").rglob("*.py")):
        rel = p.relative_to(REPO).with_suffix("")
        if rel.parts[1] == "ros" or p.name == "__main__.py":
            continue
        mods.append(".".join(rel.parts[:-1] if p.name == "__init__.py" else rel.parts))
    return mods


def test_core_imports_without_rclpy():
    mods = core_modules()
    assert "reloc_ros.geometry.pose" in mods and len(mods) > 5
    code = (
        "import sys, importlib\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'rclpy' or name.startswith('rclpy.'):\n"
        "            raise ImportError('rclpy is blocked: the core must not import it')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for m in {mods!r}:\n"
        "    importlib.import_module(m)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
