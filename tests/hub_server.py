"""A minimal Hugging Face Hub on 127.0.0.1 for the hub tests: just what huggingface_hub's own client calls.

Uploads: ``create_repo``, ``create_branch``, README metadata validation, ``preupload`` and the ndjson ``commit``
endpoint. Every file is declared a "regular" (inline, base64) upload, so the LFS / Xet storage protocols are not
exercised; everything else is the real client code path. Downloads: ``HEAD``/``GET .../resolve/REV/FILE`` with the
``X-Repo-Commit`` and ``ETag`` headers ``hf_hub_download`` relies on, and ``/api/models/REPO[/revision/REV]``.

No Hub mirror package on PyPI accepts uploads (olah serves downloads only), hence this file; ``OlahMirror`` runs
olah over a git copy of a pushed repo (``LoopbackHub.export_git``) for a second, independent download server.
``SilentEndpoint`` is the opposite: a port that accepts connections and never answers (a hung proxy or server).

State lives in memory, a commit is applied all at once or not at all, and ``fail_next_commit`` injects a server
error after the payload has been read, to check that a failed push leaves the repository untouched. Only the
loopback address is used; the server runs in a daemon thread and stops when its ``with`` block ends.
"""
import base64
import hashlib
import json
import os
import re
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

__all__ = ['LoopbackHub', 'OlahMirror', 'SilentEndpoint']

_MAX_BODY = 256 * 1024 * 1024  # refuse absurd bodies instead of reading them


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()


@dataclass
class _Repo:
    owner: str
    private: bool
    branches: Dict[str, str] = field(default_factory=dict)  # branch -> commit id
    commits: Dict[str, Dict[str, bytes]] = field(default_factory=dict)  # commit id -> {path: content}
    messages: Dict[str, str] = field(default_factory=dict)


class LoopbackHub:
    """An in-memory Hub endpoint for tests. Use as ``with LoopbackHub(token='...') as hub: hub.url``."""

    def __init__(self, token: str = 'hf_loopback_test_token', user: str = 'tester', request_timeout: float = 20.):
        self.token = token
        self.user = user
        self.request_timeout = request_timeout
        self.repos: Dict[str, _Repo] = {}
        self.requests: List[Tuple[str, str]] = []  # (method, path), in arrival order
        self.fail_next_commit: Optional[int] = None  # HTTP status to answer the next commit with
        self._lock = threading.Lock()
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # lifecycle
    @property
    def url(self) -> str:
        assert self._server is not None, 'server not started'
        host, port = self._server.server_address[:2]
        return f'http://{host}:{port}'

    def __enter__(self) -> 'LoopbackHub':
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        Handler.timeout = self.request_timeout  # socket timeout: a stalled client cannot hold a thread forever
        self._server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={'poll_interval': 0.1}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    # inspection helpers for the tests
    def files(self, repo_id: str, revision: str = 'main') -> Dict[str, bytes]:
        repo = self.repos[repo_id]
        return dict(repo.commits[repo.branches.get(revision, revision)])

    def commit_count(self, repo_id: str) -> int:
        return len(self.repos[repo_id].commits)

    def export_git(self, repo_id: str, path: Union[str, Path], revision: str = 'main') -> str:
        """Write one revision as a git repository (what a Hub mirror such as olah serves); returns its commit."""
        path = Path(path)
        path.mkdir(parents=True)
        for name, content in self.files(repo_id, revision).items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(content)
        env = dict(os.environ, GIT_AUTHOR_NAME='loopback', GIT_AUTHOR_EMAIL='loopback@127.0.0.1',
                   GIT_COMMITTER_NAME='loopback', GIT_COMMITTER_EMAIL='loopback@127.0.0.1', GIT_CONFIG_NOSYSTEM='1',
                   GIT_CONFIG_GLOBAL=os.devnull)  # no user git-lfs filter: files are stored as plain blobs
        for cmd in (['init', '-q', '-b', 'main'], ['add', '-A'], ['commit', '-q', '-m', f'{repo_id}@{revision}']):
            subprocess.run(['git', '-c', 'core.hooksPath=/dev/null', *cmd], cwd=path, env=env, check=True,
                           capture_output=True, timeout=60)
        return subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=path, check=True, capture_output=True, text=True,
                              timeout=60).stdout.strip()

    # state changes (called under the lock)
    def _new_commit(self, repo: _Repo, files: Dict[str, bytes], message: str) -> str:
        digest = hashlib.sha1(repr((sorted(repo.commits), message, time.time_ns())).encode())
        for path in sorted(files):
            digest.update(path.encode() + b'\0' + git_blob_sha1(files[path]).encode())
        oid = digest.hexdigest()
        repo.commits[oid] = files
        repo.messages[oid] = message
        return oid


class SilentEndpoint:
    """``with SilentEndpoint() as url``: a loopback port whose connections the kernel accepts and nobody answers."""

    def __enter__(self) -> str:
        self._socket = socket.socket()
        self._socket.bind(('127.0.0.1', 0))
        self._socket.listen(64)  # the backlog completes the handshakes; accept() is never called
        return 'http://127.0.0.1:%d' % self._socket.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self._socket.close()


class _Handler(BaseHTTPRequestHandler):
    hub: LoopbackHub
    protocol_version = 'HTTP/1.0'  # one request per connection: simple, and nothing lingers at shutdown

    def log_message(self, format, *args):  # keep pytest output clean
        pass

    # plumbing
    def _send(self, status: int, body: bytes = b'', headers: Optional[Dict[str, str]] = None, head: bool = False):
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault('Content-Type', 'application/json')
        headers.setdefault('Content-Length', str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: Optional[Dict[str, str]] = None, head: bool = False):
        self._send(status, json.dumps(obj).encode(), headers, head=head)

    def _error(self, status: int, message: str, code: Optional[str] = None, head: bool = False):
        headers = {'X-Error-Message': message}
        if code:
            headers['X-Error-Code'] = code
        self._json(status, {'error': message}, headers, head=head)

    def _body(self) -> bytes:
        length = int(self.headers.get('Content-Length') or 0)
        if length > _MAX_BODY:
            raise ValueError('request body too large')
        return self.rfile.read(length) if length else b''

    def _authorized(self) -> bool:
        return self.headers.get('Authorization', '') == f'Bearer {self.hub.token}'

    def _repo(self, repo_id: str, head: bool = False) -> Optional[_Repo]:
        repo = self.hub.repos.get(repo_id)
        if repo is None or (repo.private and not self._authorized()):
            self._error(404, 'Repository not found', 'RepoNotFound', head=head)
            return None
        return repo

    def _resolve(self, repo: _Repo, revision: str, head: bool = False) -> Optional[str]:
        revision = unquote(revision)
        if revision in repo.branches:
            return repo.branches[revision]
        if revision in repo.commits:
            return revision
        self._error(404, f'Invalid rev id: {revision}', 'RevisionNotFound', head=head)
        return None

    # dispatch
    def do_HEAD(self):
        self._dispatch('HEAD')

    def do_GET(self):
        self._dispatch('GET')

    def do_POST(self):
        self._dispatch('POST')

    def _dispatch(self, method: str):
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        self.hub.requests.append((method, path))
        routes = [
            ('POST', r'/api/repos/create', self._create_repo),
            ('GET', r'/api/whoami-v2', self._whoami),
            ('POST', r'/api/validate-yaml', self._validate_yaml),
            ('POST', r'/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)', self._preupload),
            ('POST', r'/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)', self._commit),
            ('POST', r'/api/models/(?P<repo>[^/]+/[^/]+)/branch/(?P<branch>[^/]+)', self._create_branch),
            ('GET', r'/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?', self._model_info),
            ('GETHEAD', r'/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)', self._resolve_file),
        ]
        try:
            for route_method, pattern, handler in routes:
                m = re.fullmatch(pattern, path)
                if m and method in (route_method if route_method != 'GETHEAD' else ('GET', 'HEAD')):
                    with self.hub._lock:
                        return handler(method=method, query=query, **m.groupdict())
            self._error(404, f'no route for {method} {path}', head=method == 'HEAD')
        except Exception as e:  # a bug here must show up as a 500, never as a hang
            self._error(500, f'loopback hub error: {type(e).__name__}: {e}', head=method == 'HEAD')

    # upload API
    def _create_repo(self, method, query):
        if not self._authorized():
            return self._error(401, 'Invalid credentials in Authorization header')
        payload = json.loads(self._body())
        repo_id = f"{payload.get('organization') or self.hub.user}/{payload['name']}"
        if payload.get('type', 'model') != 'model':
            return self._error(400, 'only model repos are served here')
        if repo_id in self.hub.repos:  # the Hub's 409 still carries the url, which exist_ok=True relies on
            message = 'You already created this model repo'
            return self._json(409, {'error': message, 'url': f'{self.hub.url}/{repo_id}'}, {'X-Error-Message': message})
        repo = _Repo(owner=self.hub.user, private=payload.get('visibility') == 'private')
        gitattributes = b'*.safetensors filter=lfs diff=lfs merge=lfs -text\n'
        repo.branches['main'] = self.hub._new_commit(repo, {'.gitattributes': gitattributes}, 'initial commit')
        self.hub.repos[repo_id] = repo
        self._json(200, {'url': f'{self.hub.url}/{repo_id}', 'name': repo_id})

    def _whoami(self, method, query):
        if not self._authorized():
            return self._error(401, 'Invalid credentials in Authorization header')
        self._json(200, {'type': 'user', 'name': self.hub.user, 'orgs': [], 'auth': {'type': 'access_token'}})

    def _validate_yaml(self, method, query):
        content = json.loads(self._body())['content']
        m = re.match(r'---\n(.*?)\n---\n', content, flags=re.S)
        try:
            meta = yaml.safe_load(m.group(1)) if m else {}
            if not isinstance(meta or {}, dict):
                raise ValueError('metadata is not a mapping')
        except Exception as e:
            return self._json(400, {'errors': [{'message': str(e)}], 'warnings': []})
        self._json(200, {'errors': [], 'warnings': []})

    def _preupload(self, method, query, repo, rev):
        if not self._authorized():
            return self._error(401, 'Invalid credentials in Authorization header')
        r = self._repo(repo)
        if r is None:
            return
        files = r.commits[r.branches.get(unquote(rev), r.branches['main'])]
        payload = json.loads(self._body())
        out = [{
            'path': f['path'],
            'uploadMode': 'regular',
            'shouldIgnore': False,
            'oid': git_blob_sha1(files[f['path']]) if f['path'] in files else None,
        } for f in payload['files']]
        self._json(200, {'files': out})

    def _create_branch(self, method, query, repo, branch):
        if not self._authorized():
            return self._error(401, 'Invalid credentials in Authorization header')
        r = self._repo(repo)
        if r is None:
            return
        branch = unquote(branch)
        payload = json.loads(self._body() or b'{}')
        if branch in r.branches:
            return self._error(409, f'Reference already exists: refs/heads/{branch}')
        start = self._resolve(r, payload.get('startingPoint') or 'main')
        if start is not None:
            r.branches[branch] = start
            self._json(200, {})

    def _commit(self, method, query, repo, rev):
        if not self._authorized():
            return self._error(401, 'Invalid credentials in Authorization header')
        r = self._repo(repo)
        if r is None:
            return
        if unquote(rev) not in r.branches:
            return self._error(404, f'Invalid rev id: {unquote(rev)}', 'RevisionNotFound')
        head = r.branches[unquote(rev)]
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        if self.hub.fail_next_commit:
            status, self.hub.fail_next_commit = self.hub.fail_next_commit, None
            return self._error(status, 'Internal Error - We\'re working hard to fix this as soon as possible!')
        files = dict(r.commits[head])  # build the new tree aside; the branch moves only if every line applies
        header = {}
        for line in lines:
            key, value = line['key'], line['value']
            if key == 'header':
                header = value
            elif key == 'file':
                files[value['path']] = base64.b64decode(value['content'])
            elif key == 'deletedFile':
                if value['path'] not in files:
                    return self._error(404, "A file with this name doesn't exist", 'EntryNotFound')
                del files[value['path']]
            elif key == 'deletedFolder':
                prefix = value['path'].rstrip('/') + '/'
                files = {k: v for k, v in files.items() if not k.startswith(prefix)}
            else:
                return self._error(422, f'{key} operations are not supported by the loopback hub')
        if header.get('parentCommit') and header['parentCommit'] != head:
            return self._error(412, 'A commit has happened since. Please refresh and try again.')
        oid = self.hub._new_commit(r, files, header.get('summary', ''))
        r.branches[unquote(rev)] = oid
        self._json(200, {'commitUrl': f'{self.hub.url}/{repo}/commit/{oid}', 'commitOid': oid, 'success': True})

    # download API
    def _model_info(self, method, query, repo, rev=None):
        r = self._repo(repo)
        if r is None:
            return
        oid = self._resolve(r, rev or 'main')
        if oid is None:
            return
        siblings = [{'rfilename': p, 'size': len(b)} for p, b in sorted(r.commits[oid].items())]
        self._json(200, {'id': repo, 'modelId': repo, 'sha': oid, 'private': r.private, 'siblings': siblings,
                         'tags': [], 'downloads': 0, 'likes': 0})

    def _resolve_file(self, method, query, repo, rev, file):
        head = method == 'HEAD'
        r = self._repo(repo, head=head)
        if r is None:
            return
        oid = self._resolve(r, rev, head=head)
        if oid is None:
            return
        content = r.commits[oid].get(unquote(file))
        if content is None:
            return self._error(404, 'Entry not found', 'EntryNotFound', head=head)
        headers = {
            'Content-Type': 'application/octet-stream',
            'X-Repo-Commit': oid,
            'ETag': f'"{git_blob_sha1(content)}"',
        }
        self._send(200, content, headers, head=head)


class OlahMirror:
    """olah (a Hub mirror server from PyPI) serving git repositories from ``root/mirrors/models/ORG/NAME``.

    It runs as a subprocess on 127.0.0.1, offline (its upstream is pointed at a closed loopback port as well), and
    is terminated when the ``with`` block ends. Downloads only: olah has no upload API.
    """

    def __init__(self, root: Union[str, Path], startup_timeout: float = 60.):
        self.root = Path(root)
        self.mirrors = self.root / 'mirrors'
        self.startup_timeout = startup_timeout
        self.port: Optional[int] = None
        self._proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f'http://127.0.0.1:{self.port}'

    def repo_path(self, repo_id: str) -> Path:
        return self.mirrors / 'models' / repo_id

    def __enter__(self) -> 'OlahMirror':
        import socket
        import sys
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            self.port = s.getsockname()[1]
        self.mirrors.mkdir(parents=True, exist_ok=True)
        config = self.root / 'olah.toml'
        config.write_text('\n'.join([
            '[basic]',
            'host = "127.0.0.1"',
            f'port = {self.port}',
            f'repos-path = "{self.root / "cache"}"',
            f'mirrors-path = ["{self.mirrors}"]',
            'hf-scheme = "http"',
            'hf-netloc = "127.0.0.1:9"',
            'hf-lfs-netloc = "127.0.0.1:9"',
            'mirror-scheme = "http"',
            f'mirror-netloc = "127.0.0.1:{self.port}"',
            f'mirror-lfs-netloc = "127.0.0.1:{self.port}"',
            '[accessibility]',
            'offline = true',
            '',
        ]))
        self.log = open(self.root / 'olah.out', 'wb')
        self._proc = subprocess.Popen(
            [sys.executable, '-m', 'olah.server', '-c', str(config), '--log-path', str(self.root / 'logs')],
            cwd=self.root, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc.poll() is not None:
                self.__exit__()
                raise RuntimeError(f'olah exited with {self._proc.returncode}: {(self.root / "olah.out").read_text()[-2000:]}')
            try:
                with socket.create_connection(('127.0.0.1', self.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError(f'olah did not listen on port {self.port} within {self.startup_timeout} s')
                time.sleep(0.2)
        return self

    def __exit__(self, *exc) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        if getattr(self, 'log', None) is not None:
            self.log.close()
            self.log = None
