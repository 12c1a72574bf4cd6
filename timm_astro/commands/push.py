"""``timm-astro push PATH REPO_ID``: an exported folder (or a checkpoint, exported on the fly) to the Hub."""
import argparse
import importlib
from typing import List, Optional, Tuple

from timm_astro.commands import run_command

PROG = 'timm-astro push'


def _hub_error_message(e: BaseException) -> Optional[str]:
    """The Hub's refusals and an unreachable endpoint as one line; None for anything else."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError
    transport_errors: Tuple[type, ...] = ()
    for client in ('httpx2', 'httpx'):  # huggingface_hub's HTTP client by version (requests' errors are OSErrors)
        try:
            transport_errors += (importlib.import_module(client).HTTPError,)
        except (ImportError, AttributeError):
            pass
    if isinstance(e, HFValidationError):
        return str(e)
    if isinstance(e, HfHubHTTPError):
        status = getattr(getattr(e, 'response', None), 'status_code', None)
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if status in (401, 403):
            return f'the Hub refused the token (HTTP {status}): check HF_TOKEN or `hf auth login`; {detail}'
        return f'the Hub answered with an error, nothing was committed: {detail}'
    if isinstance(e, transport_errors):
        return f'cannot reach {constants.ENDPOINT} ({type(e).__name__}: {e}); nothing was committed'
    return None


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
    args = parser.parse_args(argv)
    from huggingface_hub import get_token
    token = get_token()

    def run() -> None:
        from timm_astro.hub import push
        print(push(args.path, args.repo_id, private=args.private, revision=args.revision,
                   commit_message=args.commit_message, token=token))
    return run_command(PROG, run, secret=token, translate=_hub_error_message)
