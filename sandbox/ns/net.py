"""`--net none`: a network namespace with only loopback, brought up with pyroute2.

pyroute2 costs ~110 ms to import, so it is imported only on this path, by the launcher
before the fork (init imports nothing). A netlink socket belongs to the network
namespace of the process that opens it, so the socket itself can only be opened in
init, after unshare(CLONE_NEWNET): `loopback_up()` returns the function init calls.
"""

from __future__ import annotations

from collections.abc import Callable


def loopback_up() -> Callable[[], None]:
    from pyroute2 import IPRoute

    def bring_up() -> None:
        # A new network namespace has lo, down: without it even 127.0.0.1 is unreachable.
        try:
            with IPRoute() as ipr:
                (index,) = ipr.link_lookup(ifname="lo")
                ipr.link("set", index=index, state="up")
        except OSError:
            raise
        except Exception as e:  # pyroute2's NetlinkError and friends: report, don't crash init
            raise OSError(getattr(e, "code", 0) or 5, str(e)) from None

    return bring_up
