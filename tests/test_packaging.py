"""The client side installs without torch or diffusers: its imports must not reach them."""

import subprocess
import sys

BLOCK_HEAVY = (
    "import sys\n"
    "for name in ('torch', 'diffusers', 'transformers', 'onnxruntime'):\n"
    "    sys.modules[name] = None  # any import of them now fails\n"
)


def test_contract_video_and_client_import_without_torch():
    code = BLOCK_HEAVY + (
        "import wan_triton.contract, wan_triton.video, wan_triton.client, wan_triton.repository\n"
        "from wan_triton.cli import parser\n"
        "parser().parse_args(['generate', 'a cat', '-o', 'x.mp4', '--checkpoint', '.'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_cli_help_lists_the_commands():
    result = subprocess.run([sys.executable, "-m", "wan_triton.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("tiny-checkpoint", "export", "generate"):
        assert command in result.stdout
