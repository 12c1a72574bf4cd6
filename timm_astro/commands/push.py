"""``timm-astro push PATH REPO_ID``: an exported folder (or a checkpoint, exported on the fly) to the Hub."""
import argparse
from typing import List, Optional

from timm_astro.commands import run_command

PROG = 'timm-astro push'


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description='Upload an exported folder (or a checkpoint, exported on the fly) to the Hugging Face Hub in '
                    'one commit. The token comes from HF_TOKEN or `hf auth login`; HF_ENDPOINT is honoured.')
    parser.add_argument('path', help='folder written by `timm-astro export`, or a train.py checkpoint')
    parser.add_argument('repo_id', help='ORG/NAME (or NAME, in your own namespace)')
    parser.add_argument('--private', action='store_true', help='create the repo private (ignored if it exists)')
    parser.add_argument('--revision', default=None, help='branch to commit to (created from main if missing)')
    parser.add_argument('--commit-message', default=None, help='commit summary')
    parser.add_argument('--timeout', type=float, default=60.0,
                        help='seconds to wait for each answer of the Hub (default: 60)')
    parser.add_argument('--retries', type=int, choices=range(0, 10), default=2, metavar='N',
                        help='retries of a request that found no answer, except the commit itself (default: 2)')
    args = parser.parse_args(argv)
    from huggingface_hub import get_token
    token = get_token()

    def run() -> None:
        from timm_astro.hub import push
        print(push(args.path, args.repo_id, private=args.private, revision=args.revision,
                   commit_message=args.commit_message, token=token, timeout=args.timeout, retries=args.retries))
    return run_command(PROG, run, secret=token)
