"""``megafs web enable``: let browsers open a store's links (docs/format.md §5b)."""

from __future__ import annotations

import trio

from megafs.backends import TransientError, parse_url
from megafs.errors import BackendUnavailable, BadCredentials, UsageError
from megafs.store import share as share_format


def add_commands(sub) -> None:
    p = sub.add_parser("web", help="let browsers open the links of an S3 store",
                       description="Browser links (https://.../megafs.html#...) of an S3"
                                   " store.")
    web = p.add_subparsers(dest="web_command", required=True, metavar="COMMAND",
                           help="enable (S3 stores) or serve (local stores)")
    e = web.add_parser("enable", help="allow anonymous reads of shared objects and upload"
                                      " the download page",
                       description="Set the bucket policy that lets anyone GET the objects"
                                   " links read (share manifests and blocks, never a"
                                   " listing) and upload the download page to"
                                   " PREFIX/megafs.html. Needs credentials allowed to change"
                                   " the bucket policy; without them, prints the policy to"
                                   " apply.")
    e.add_argument("url", metavar="STORAGE_URL", help="s3://HOST[:PORT]/BUCKET[/PREFIX]")
    e.set_defaults(fn=_enable)
    v = web.add_parser("serve", help="serve a local store's links and the page read-only over"
                                     " HTTP",
                       description="Serve the download page, share manifests and blocks of"
                                   " the local store STORAGE_URL (nothing else) read-only over"
                                   " HTTP on ADDRESS until interrupted. Browsers run the page"
                                   " only from a secure context: http:// works on this"
                                   " machine (127.0.0.1), other machines need an https proxy"
                                   " in front.")
    v.add_argument("address", metavar="ADDRESS", help="HOST:PORT to listen on, e.g."
                                                      " 127.0.0.1:8080")
    v.add_argument("url", metavar="STORAGE_URL", help="local:///absolute/path")
    v.set_defaults(fn=_serve)


def _serve(args) -> int:
    from megafs.cli.webserve import serve

    return serve(args.address, args.url)


def _enable(args) -> int:
    scheme, url = parse_url(args.url)
    if scheme not in ("s3", "s3+http"):
        raise UsageError(f"{args.url}: browser links need the store on an S3 endpoint")
    return trio.run(_enable_async, url)


async def _enable_async(url: str) -> int:
    from megafs.backends import s3web
    from megafs.backends.s3 import S3Backend
    from megafs.web import PAGE_NAME, page

    backend = S3Backend.from_url(url)
    loc = backend.location
    refused = []
    try:
        await backend.check()
        try:
            await s3web.put_page(backend, PAGE_NAME, page())
        except (BadCredentials, BackendUnavailable, TransientError) as e:
            refused.append(f"cannot upload the page ({e})")
        try:
            policy = s3web.merged(await s3web.get_policy(backend), loc.bucket, loc.prefix)
            await s3web.put_policy(backend, policy)
        except (BadCredentials, BackendUnavailable, TransientError) as e:
            print(s3web.policy_text(loc.bucket, loc.prefix))
            refused.append(f"cannot set the bucket policy ({e}): apply the policy above to"
                           " the bucket (merged into any policy it has)")
    finally:
        await backend.aclose()
    if refused:
        raise BadCredentials("; ".join(refused) + f"; the page is megafs/web/{PAGE_NAME} in"
                             " the megafs package")
    page_url = f"{share_format.web_base(url)}/{PAGE_NAME}"
    status = await s3web.anonymous_status(page_url)
    if status != 200:
        raise BackendUnavailable(f"the policy is set but an anonymous GET of {page_url} gets"
                                 f" {status if isinstance(status, str) else f'HTTP {status}'}")
    print(f"browsers can open links of {url} (the page is {page_url})")
    return 0
