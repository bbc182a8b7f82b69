"""README.md's code examples run as written, and .ci/run uses the README's test command."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_python_examples_run():
    # Every python block runs, except sketches marked as such (they use the reader's own model).
    blocks = [code for marker, code in re.findall(r"(<!-- sketch[^>]*-->\n)?```python\n(.*?)```", README, flags=re.S)
              if not marker]
    assert blocks, "README.md has no python example"
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})


def test_ci_runs_the_readme_test_command():
    marker = README.index("<!-- ci: test command -->")
    command = re.search(r"```bash\n(.*?)\n```", README[marker:], flags=re.S).group(1)
    # Run the very awk program that .ci/run uses to pick the command.
    program = re.search(r"awk '([^']*)' README.md", (ROOT / ".ci" / "run").read_text()).group(1)
    extracted = subprocess.run(["awk", program, str(ROOT / "README.md")], capture_output=True, text=True,
                               check=True).stdout.strip()
    assert extracted == command
    assert "torch==2.13.0" in command and "pytest" in command
