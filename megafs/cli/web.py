"""``megafs web enable``: let browsers open a store's links (docs/format.md §5b)."""

from __future__ import annotations

import sys

import trio

from megafs.backends import parse_url
from megafs.errors import BackendUnavailable, BadCredentials, UsageError
from megafs.store import share as share_format


def add_commands(sub) -> None:
    p = sub.add_parser("web", help="let browsers open the links of an S3 store",
                       description="Browser links (https://.../megafs.html#...) of an S3"
                                   " store.")
    web = p.add_subparsers(dest="web_command", required=True, metavar="COMMAND")
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
    try:
        await backend.check()
        key = PAGE_NAME
        await s3web.put_page(backend, key, page())
        try:
            policy = s3web.merged(await s3web.get_policy(backend), loc.bucket, loc.prefix)
            await s3web.put_policy(backend, policy)
        except (BadCredentials, BackendUnavailable) as e:
            print(s3web.policy_text(loc.bucket, loc.prefix))
            raise BadCredentials(f"cannot set the bucket policy ({e}): apply the policy above"
                                 " to the bucket by hand (merge it into an existing one)"
                                 ) from None
    finally:
        await backend.aclose()
    page_url = f"{share_format.web_base(url)}/{PAGE_NAME}"
    status = await s3web.anonymous_status(page_url)
    if status != 200:
        raise BackendUnavailable(f"the policy is set but an anonymous GET of {page_url} gets"
                                 f" {status if isinstance(status, str) else f'HTTP {status}'}")
    print(f"browsers can open links of {url} (the page is {page_url})", file=sys.stderr)
    return 0
