"""What a compiled program does besides computing, read from its optimised HLO text
(`jax.jit(f).lower(...).compile().as_text()`), for the no-host-sync tests."""

import re

# host callbacks (jax.debug.callback / print, pure_callback, io_callback) compile to one of
# these custom calls; infeed/outfeed/send/recv move data to or from the host
_CALLBACK_TARGET = re.compile(r'custom_call_target="([^"]*callback[^"]*)"')
_HOST_OPS = re.compile(r"= [^=]*? (infeed|outfeed|send|send-done|recv|recv-done)\(")


def host_transfers(hlo: str) -> list[str]:
    """The host callbacks and host transfers in a compiled program (empty when none)."""
    return _CALLBACK_TARGET.findall(hlo) + _HOST_OPS.findall(hlo)


def unbounded_loops(hlo: str) -> list[str]:
    """The while loops whose trip count XLA could not derive: their predicate depends on
    the data, and a GPU reads it back on the host after every iteration."""
    return [line.split("=")[0].strip() for line in hlo.splitlines()
            if " while(" in line and "known_trip_count" not in line]
