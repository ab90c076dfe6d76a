"""
Run nanoGPT's own sample.py, unmodified, on a checkpoint folder: the oracle tests/test_cuda.py compares
our sample.py against on the same GPU, where nanoGPT's output cannot be stored in advance (its bfloat16
kernels differ between GPUs and library versions).

    NANOGPT_DIR=path/to/nanoGPT python tools/run_nanogpt.py OUT_DIR [--key=value ...]

NANOGPT_DIR is a clone of karpathy/nanoGPT at commit 3adf61e:
    git clone https://github.com/karpathy/nanoGPT && git -C nanoGPT checkout 3adf61e
nanoGPT's sample.py reads configurator.py and data/<dataset>/meta.pkl relative to the working directory,
so it runs in a temporary folder holding configurator.py and, where the checkpoint names a dataset and
OUT_DIR has a meta.pkl, that meta.pkl. Its stdout and stderr pass through unchanged (diagnostic lines
included: tests/helpers.py's drop_diagnostics removes them); the exit code is sample.py's, or 2 with one
line on stderr when NANOGPT_DIR or OUT_DIR is not usable.
"""
import os
import shutil
import subprocess
import sys
import tempfile

NANOGPT_FILES = ('sample.py', 'model.py', 'configurator.py')


def nanogpt_dir():
    """NANOGPT_DIR, absolute, or None with the reason: (None, why)."""
    where = os.environ.get('NANOGPT_DIR')
    if not where:
        return None, "NANOGPT_DIR is not set: point it to a clone of karpathy/nanoGPT at commit 3adf61e"
    missing = [f for f in NANOGPT_FILES if not os.path.isfile(os.path.join(where, f))]
    if missing:
        return None, f"NANOGPT_DIR={where} has no {', '.join(missing)}: it should be a clone of karpathy/nanoGPT"
    return os.path.abspath(where), None


def checkpoint_dataset(out_dir):
    """The dataset name nanoGPT's train.py recorded in OUT_DIR/ckpt.pt ('' where none)."""
    import torch
    ckpt = torch.load(os.path.join(out_dir, 'ckpt.pt'), map_location='cpu', weights_only=True, mmap=True)
    return (ckpt.get('config') or {}).get('dataset') or ''


def main(argv):
    if len(argv) < 1 or argv[0].startswith('-'):
        print("usage: NANOGPT_DIR=path/to/nanoGPT python tools/run_nanogpt.py OUT_DIR [--key=value ...]", file=sys.stderr)
        return 2
    nanogpt, why = nanogpt_dir()
    out_dir = os.path.abspath(argv[0])
    if nanogpt is None or not os.path.isfile(os.path.join(out_dir, 'ckpt.pt')):
        print(f"error: {why or f'no ckpt.pt in {out_dir}'}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix='nanogpt-') as work:
        shutil.copy(os.path.join(nanogpt, 'configurator.py'), work)
        dataset, meta = checkpoint_dataset(out_dir), os.path.join(out_dir, 'meta.pkl')
        if dataset and os.path.isfile(meta):
            os.makedirs(os.path.join(work, 'data', dataset))
            shutil.copy(meta, os.path.join(work, 'data', dataset))
        # sample.py imports model.py from its own folder (sys.path[0]); the rest comes from the working directory
        return subprocess.run([sys.executable, os.path.join(nanogpt, 'sample.py'), f'--out_dir={out_dir}', *argv[1:]],
                              cwd=work).returncode


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
