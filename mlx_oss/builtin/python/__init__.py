"""The built-in `python` tool gpt-oss was trained on: code in a separate process, only when approved."""

from mlx_oss.builtin.python.docker import DockerLimits, DockerSession, docker_available
from mlx_oss.builtin.python.kernel import KernelSession, safe_env
from mlx_oss.builtin.python.tool import PYTHON_BACKENDS, Approve, PythonAnswer, PythonTool, python_namespace

__all__ = [
    "PYTHON_BACKENDS",
    "Approve",
    "DockerLimits",
    "DockerSession",
    "KernelSession",
    "PythonAnswer",
    "PythonTool",
    "docker_available",
    "python_namespace",
    "safe_env",
]
