"""The deterministic event loop (util/async.c, util/aio-posix.c, util/qemu-coroutine.c).

QEMU's main loop runs bottom halves (BHs), timers and coroutine wake-ups;
``aio_poll`` runs one iteration and ``AIO_WAIT_WHILE`` / ``BDRV_POLL_WHILE``
poll until a condition clears. Here one iteration runs exactly one ready item,
chosen by the scheduler, so every interleaving is a sequence of choices.

Time is virtual: a blocking poll with nothing ready jumps to the earliest
timer, so rate limits (``speed``) shape the order of events without sleeping.

Coroutines are generators. A job's coroutine yields a :class:`Yield`
directive; :meth:`Coroutine.enter` runs it until the next one, synchronously,
as ``aio_co_enter`` does from the main loop outside coroutine context.
"""
from __future__ import annotations

from typing import Callable, Generator

from reference.errors import Hang

#: one item that can run in a poll iteration: (key, callback)
Ready = tuple[str, Callable[[], None]]

MAX_STEPS = 200_000     # a run that needs more is a hang
MAX_POLL_DEPTH = 64     # nested poll_while calls


class Timer:
    """An armed timer sits in its context's ``timers`` list, in arming order; it
    leaves the list when it fires or is cancelled (timer_del)."""

    __slots__ = ("deadline", "key", "cb", "armed", "ctx")

    def __init__(self, deadline: int, key: str, cb: Callable[[], None], ctx: AioContext):
        self.deadline = deadline
        self.key = key
        self.cb = cb
        self.armed = True
        self.ctx = ctx

    def cancel(self) -> None:
        if self.armed:
            self.armed = False
            self.ctx.timers.remove(self)


class AioContext:
    """The main AioContext: BHs, timers, and the scheduler's choices."""

    def __init__(self, choose: Callable, max_steps: int = MAX_STEPS):
        self.choose = choose
        self.max_steps = max_steps
        self.bhs: list[Ready] = []
        self.timers: list[Timer] = []
        self.now = 0                # virtual nanoseconds
        self.steps = 0
        self.on_step: Callable[[str], None] | None = None
        self.waiting: list[str] = []    # what each nested poll_while waits for, outermost first

    @property
    def poll_depth(self) -> int:
        """How many poll_while calls are nested here."""
        return len(self.waiting)

    # -- scheduling ---------------------------------------------------------

    def bh_schedule(self, key: str, cb: Callable[[], None]) -> None:
        """aio_bh_schedule_oneshot: run ``cb`` in a later iteration."""
        self.bhs.append((key, cb))

    def timer_new(self, delay_ns: int, key: str, cb: Callable[[], None]) -> Timer:
        t = Timer(self.now + max(0, delay_ns), key, cb, self)
        self.timers.append(t)
        return t

    # -- running -------------------------------------------------------------

    def _due(self) -> list[Timer]:
        """The timers due now, in arming order."""
        now = self.now
        return [t for t in self.timers if t.deadline <= now]

    def aio_poll(self, blocking: bool, until=None) -> bool:
        """Run one ready item (the scheduler picks which); False if none could run.

        What is ready: the BHs in scheduling order, then the due timers in arming
        order; the scheduler is offered their keys. A blocking poll with nothing ready
        jumps virtual time to the earliest timer, but not past ``until`` (virtual ns)
        when given.

        A C call when compiled (loop.pxd: poll_while and the backend's loop call it at
        every step), and it builds no list of what is ready beyond the keys: the
        chosen BH is taken out by its index (an equal BH before it would run the same
        callback). ``until`` has no ``int | None`` annotation, which Cython would take
        for a type."""
        bhs = self.bhs
        due = self._due()
        if not bhs and not due:
            if not blocking or not self.timers:
                return False
            deadline = None         # the earliest (min() of the deadlines, without a generator)
            for t in self.timers:
                if deadline is None or t.deadline < deadline:
                    deadline = t.deadline
            if until is not None and deadline > until:
                return False
            self.now = deadline
            due = self._due()
        n = len(bhs) + len(due)
        i = 0 if n == 1 else self.choose(n, "poll", [bh[0] for bh in bhs] + [t.key for t in due])
        if i < len(bhs):
            key, cb = bhs.pop(i)
        else:
            timer = due[i - len(bhs)]
            key, cb = timer.key, timer.cb
            timer.cancel()
        self.steps += 1
        if self.steps > self.max_steps:
            raise Hang(f"the event loop to settle (step limit {self.max_steps})", self.steps)
        if self.on_step is not None:
            self.on_step(key)
        cb()
        return True

    def poll_while(self, cond: Callable[[], bool], what: str) -> None:
        """AIO_WAIT_WHILE: poll until ``cond()`` is false; re-entrant, bounded."""
        if not cond():
            return
        self.waiting.append(what)
        try:
            if len(self.waiting) > MAX_POLL_DEPTH:
                raise Hang(f"{what} (poll nesting deeper than {MAX_POLL_DEPTH})", self.steps)
            while cond():
                if not self.aio_poll(blocking=True):
                    raise Hang(what, self.steps)
        finally:
            self.waiting.pop()


class Yield:
    """What a coroutine yields: how it wants to be woken."""

    __slots__ = ("kind", "delay")

    def __init__(self, kind: str, delay: int = 0):
        self.kind = kind      # "sleep" (timer), "wait" (explicit enter), "io" (completion)
        self.delay = delay


YIELD_WAIT = Yield("wait")
YIELD_IO = Yield("io")


class Coroutine:
    """A generator run as a QEMU coroutine.

    ``enter()`` runs it to its next yield (or its end) synchronously;
    ``on_yield(directive)`` and ``on_return(value)`` tell the owner what happened.
    """

    __slots__ = ("gen", "running", "done", "on_yield", "on_return")

    def __init__(self, gen: Generator, on_yield: Callable[[Yield], None],
                 on_return: Callable[[object], None]):
        self.gen = gen
        self.running = False
        self.done = False
        self.on_yield = on_yield
        self.on_return = on_return

    def enter(self) -> None:
        assert not self.running and not self.done, "coroutine re-entered"
        self.running = True
        try:
            directive = self.gen.send(None)
        except StopIteration as stop:
            self.running = False
            self.done = True
            on_return = self.on_return
            # finished: it lets go of its owner, whose callbacks these are
            self.gen = self.on_yield = self.on_return = None
            on_return(stop.value)
            return
        self.running = False
        self.on_yield(directive)
