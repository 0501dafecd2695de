"""`limner serve` refuses bad flags, a missing model and a missing key file before anything loads."""
import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "limner.cli"]


@pytest.mark.parametrize("flags, says", [
    (["--queue", "0"], "--queue must be at least 1, not 0"),
    (["--job-timeout", "-1"], "--job-timeout must be above 0"),
    (["--max-side", "0"], "--max-side must be at least 1, not 0"),
    (["--max-result-mb", "0"], "--max-result-mb must be above 0"),
    (["--model", "no/such/folder"], "no limner model at 'no/such/folder'"),
    (["--api-key-file", "no-such-keys.txt"], "no API key file at 'no-such-keys.txt'"),
])
def test_bad_start_is_one_clear_line(flags, says, tmp_path):
    r = subprocess.run(CLI + ["serve", "--port", "1", *flags], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_serve_is_a_listed_verb():
    r = subprocess.run(CLI + ["--help"], capture_output=True, text=True, timeout=60)
    assert "serve" in r.stdout and "OpenAI images API" in r.stdout
