"""What a hosted app lets an anonymous stranger do, as plain functions and small classes (no UI code).

The app (``app.py``) is meant to run as a public demo, e.g. a Hugging Face Space. This module holds its
rules, so they can be read, tested and reused in one place:

- :class:`Catalog`: the datasets and results folders the operator named at launch. A request names one by
  its label, never by a path or id; each is resolved on the server and files are read only inside it.
- :class:`Limits`: a bound on every number a request carries (steps, size, strength, guidance, seed) and a
  per-request time limit (:class:`Deadline`), whatever the sliders allow.
- :class:`Admission`: at most a few pending jobs per browser session and per client address in each lane, so
  one client cannot fill the queue.
- :class:`Reviewers`: who a reviewer is (a signed-in name, or a typed one on a private bind) and how fast they
  may answer; :func:`sign_in_limit`, :class:`UploadBudget` and :func:`allowed_origin`: what
  :class:`d3s.gate.Gate` checks on every HTTP request before Gradio sees it.

Every refusal is a :class:`Refused` with a fixed sentence that says what to do; the app shows it as is.
"""

from __future__ import annotations

import hmac
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = ("127.0.0.1", "localhost", "::1")
SPACE_HOST = "0.0.0.0"  # where a Hugging Face Space expects the app to listen (unless GRADIO_SERVER_NAME says)


class Refused(ValueError):
    """A request the demo does not serve; the message is a fixed sentence, safe to show to anyone.

    ``field`` names the input at fault, when one is (the app shows the message beside it).
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def is_public(host: str) -> bool:
    """Whether the app listens beyond this machine (anything but a loopback address)."""
    return host not in LOOPBACK


# --- the operator's data -------------------------------------------------------------------------------------

def parse_entry(text: str) -> tuple[str, str]:
    """``"LABEL=SOURCE"`` or ``"SOURCE"`` -> (label, source); the label defaults to the folder's name or the Hub id.

    Labels are what users see and send; sources (server paths) never leave the server.
    """
    text = text.strip()
    label, sep, source = text.partition("=")
    if not sep:
        label, source = "", text
    source = source.strip()
    if not source:
        raise ValueError(f"Empty source in {text!r}; write SOURCE or LABEL=SOURCE.")
    if not label.strip():
        label = Path(source).name if Path(source).exists() else source
    return label.strip(), source


def _labelled(entries: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for entry in entries:
        label, source = parse_entry(entry)
        base, k = label, 2
        while label in out:  # two folders named alike: 'd3s', 'd3s (2)'
            label, k = f"{base} ({k})", k + 1
        out[label] = source
    return out


@dataclass
class Catalog:
    """The datasets and results folders a hosted app may show, by label.

    Args:
        datasets (`list[str]`): ``SOURCE`` or ``LABEL=SOURCE`` entries; a source is a local folder or a Hub
            dataset id.
        results (`list[str]`): results folders of ``d3s benchmark`` / ``d3s bgchallenge``, same syntax.
        hub_token (`bool`, defaults to `False`): send the server's Hugging Face token when fetching a Hub
            dataset (off: a public app never reaches private or gated data on its operator's behalf).
        max_dataset_bytes (`int`, defaults to 5 GiB): a Hub dataset larger than this is refused before download.
    """

    datasets: dict[str, str] = field(default_factory=dict)
    results: dict[str, str] = field(default_factory=dict)
    hub_token: bool = False
    max_dataset_bytes: int = 5 * 2**30
    _folders: dict[str, Path] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_entries(cls, datasets: list[str], results: list[str], **kw) -> "Catalog":
        return cls(_labelled(datasets), _labelled(results), **kw)

    def dataset_folder(self, label: str | None) -> Path:
        """The local folder of a catalogued dataset (a Hub id is fetched once, with the token policy and size cap)."""
        from .dataset import DatasetFormatError, local_folder

        if not isinstance(label, str) or label not in self.datasets:
            raise Refused("Choose one of the datasets this app offers from the list.")
        with self._lock:  # one download per dataset, even when several sessions ask at once
            if label not in self._folders:
                source = self.datasets[label]
                try:
                    folder = local_folder(source, token=None if self.hub_token else False, max_bytes=self.max_dataset_bytes)
                except DatasetFormatError as err:
                    print(f"[d3s app] dataset {label!r} is unavailable: {err}", flush=True)  # the operator's log
                    raise Refused("This dataset is not available right now; the operator can see why in the app's log.") from None
                self._folders[label] = folder.resolve()
            return self._folders[label]

    def results_folder(self, label: str | None) -> Path:
        if not isinstance(label, str) or label not in self.results:
            raise Refused("Choose one of the results folders this app offers from the list.")
        return Path(self.results[label]).resolve()

    def results_file(self, label: str, relative: str) -> Path | None:
        """A file inside a catalogued results folder, or None; a link that leads outside the folder is not followed."""
        root = self.results_folder(label)
        path = (root / relative).resolve()
        return path if path.is_relative_to(root) and path.is_file() else None


# --- bounded work ---------------------------------------------------------------------------------------------

def bounded(value, low: float, high: float, what: str, integer: bool = False) -> float | int:
    """``value`` as a number within [low, high], or :class:`Refused` naming the range (not the value); the refusal's
    ``field`` is ``what`` in lower case."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if not math.isfinite(number) or not low <= number <= high or (integer and number != int(number)):
        kind = "a whole number" if integer else "a number"
        raise Refused(f"{what} must be {kind} from {low:g} to {high:g}.", field=what.lower().split()[0])
    return int(number) if integer else number


@dataclass(frozen=True)
class Limits:
    """Bounds on a generation request, checked on the server whatever the sliders allow.

    The costliest request the defaults admit is one Across-backgrounds run: ten images at ``max_size`` with
    ``int(max_steps * strength)`` denoising steps each. Its denoising is interrupted at ``time_limit`` seconds; what
    the limit cannot interrupt is the VAE encoding of the ten guides before the first step and the decoding of the
    latents after the last (on a GPU, well under a second each for Stable Diffusion at 512 px).
    """

    max_steps: int = 50
    max_size: int = 512
    time_limit: float = 120.0  # seconds of denoising per request; the pipeline is interrupted past it
    max_seed: int = 2**32 - 1

    def steps(self, value, default: int) -> int:
        steps = bounded(value, 0, self.max_steps, "Steps", integer=True)
        return steps or default

    def size(self, value, default: int) -> int:
        size = bounded(value, 0, self.max_size, "Size", integer=True) or min(default, self.max_size)
        if size % 8 or size < 64:
            raise Refused(f"Size must be a multiple of 8 from 64 to {self.max_size} (or 0 for the default).", field="size")
        return size

    def strength(self, value) -> float:
        return bounded(value, 0.05, 1.0, "Strength")

    def guidance(self, value) -> float:
        return bounded(value, 0.0, 15.0, "Guidance scale")

    def seed(self, value) -> int:
        return bounded(value, 0, self.max_seed, "Seed", integer=True)


class Deadline:
    """A denoising callback that bounds the whole request, not only its denoising loop.

    Made when the request's handler starts, so the preparation (guides, the VAE encoding of the guides) counts. At
    the first step it records what the request has cost so far and reserves as much for the decoding after the
    last step (the VAE decodes about what it encoded): it asks the pipeline to stop once the time spent plus that
    reserve passes ``seconds``.
    """

    def __init__(self, seconds: float, progress=None):
        self.seconds, self.progress, self.start = seconds, progress, time.monotonic()
        self.reserve: float | None = None

    def __call__(self, step: int, total: int) -> bool:
        if self.progress is not None:
            self.progress(step, total)
        spent = time.monotonic() - self.start
        if self.reserve is None:
            self.reserve = spent
        return spent + self.reserve > self.seconds


def client_address(request, proxy_hops: int = 0) -> str:
    """Who sent a request, as far as a client cannot forge it.

    Behind ``proxy_hops`` trusted proxies (a Space: 1), the address the outermost trusted proxy saw, which it
    appended to ``X-Forwarded-For``: the ``proxy_hops``-th hop from the right. Hops further left were written by the
    client and are never read. With no trusted proxy, or a header shorter than that, the connection's peer.
    """
    if request is None:
        return "?"
    if proxy_hops > 0:
        headers = getattr(request, "headers", None) or {}
        hops = [h.strip() for h in str(headers.get("x-forwarded-for", "")).split(",") if h.strip()]
        if len(hops) >= proxy_hops:
            return hops[-proxy_hops]
    client = getattr(request, "client", None)
    return getattr(client, "host", None) or "?"


@dataclass
class _Job:
    session: str
    client: str
    admitted: float
    running: bool = False  # its handler has started (released when it ends)


class Admission:
    """Who may put another job in the queue: at most ``per_session`` pending jobs per browser session and
    ``per_client`` per client address in each lane (a lane: the events that share one worker, e.g. diffusion).

    A job is admitted before it is queued (:meth:`admit`, from the event's validator) and claimed when its handler
    starts (:meth:`enter`, which admits it there if no validator did: one gate whatever route reached the handler);
    it is released when the handler ends (:meth:`release`). A job that never reaches its handler (the client went
    away, or cancelled it, while it waited) is freed as soon as ``alive(session)`` says the session has nothing
    waiting or running (checked ``grace`` seconds after admission, the time the queue takes to register it); without
    ``alive``, after ``stale_after`` seconds.
    """

    def __init__(self, per_session: dict[str, int], per_client: dict[str, int], stale_after: float = 900.0,
                 alive=None, grace: float = 3.0):
        self.per_session, self.per_client, self.stale_after = per_session, per_client, stale_after
        self.alive, self.grace = alive, grace
        self._jobs: dict[str, list[_Job]] = {lane: [] for lane in per_session}
        self._lock = threading.Lock()

    def _current(self, lane: str, now: float) -> list[_Job]:
        def kept(job: _Job) -> bool:
            if job.running or now - job.admitted < self.grace:
                return True
            if self.alive is not None:
                return bool(self.alive(job.session))
            return now - job.admitted < self.stale_after

        self._jobs[lane] = [j for j in self._jobs[lane] if kept(j)]
        return self._jobs[lane]

    def _admit(self, lane: str, session: str, client: str, now: float) -> _Job:
        jobs = self._current(lane, now)
        if sum(j.session == session for j in jobs) >= self.per_session[lane]:
            raise Refused("You already have a request of this kind waiting or running; wait for it to finish, "
                          "then try again.")
        if sum(j.client == client for j in jobs) >= self.per_client[lane]:
            raise Refused("Too many requests of this kind are waiting from your address; wait for them to "
                          "finish, then try again.")
        job = _Job(session, client, now)
        jobs.append(job)
        return job

    def admit(self, lane: str, session: str, client: str) -> None:
        with self._lock:
            self._admit(lane, session, client, time.monotonic())

    def enter(self, lane: str, session: str, client: str) -> None:
        """A handler starts: claim the job its validator admitted, or admit it now (raises :class:`Refused`)."""
        now = time.monotonic()
        with self._lock:
            waiting = [j for j in self._current(lane, now) if j.session == session and not j.running]
            job = waiting[0] if waiting else self._admit(lane, session, client, now)
            job.running = True

    def release(self, lane: str, session: str) -> None:
        with self._lock:
            jobs = self._jobs[lane]
            for k, job in enumerate(jobs):
                if job.session == session and job.running:
                    del jobs[k]
                    return

    def pending(self, lane: str) -> int:
        with self._lock:
            return len(self._current(lane, time.monotonic()))


# --- reviewers ------------------------------------------------------------------------------------------------

def read_auth_file(path: str | Path) -> dict[str, str]:
    """``name:password`` per line (``#`` comments and blank lines ignored) -> {name: password}.

    Names follow the review store's rule (letters, digits and ``._@-``); a malformed file is refused at launch,
    naming the line, never echoing a password.
    """
    from .review import valid_reviewer

    users: dict[str, str] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, password = line.partition(":")
        if not sep or not password or not valid_reviewer(name):
            raise ValueError(f"{path}, line {n}: expected name:password, the name made of letters, digits and ._@- "
                             "(at most 64 characters).")
        users[name] = password
    if not users:
        raise ValueError(f"{path} names no reviewer; write one name:password per line.")
    return users


def password_check(users: dict[str, str], attempts: "RateLimit | None" = None):
    """Gradio's ``auth=`` callable for these users (constant-time comparison). With ``attempts``, at most its count
    of sign-in attempts per name in its window: beyond it even the right password is turned down until the window
    has passed (the address's own limit is :class:`d3s.gate.Gate`'s)."""

    def check(name: str, password: str) -> bool:
        if attempts is not None:
            try:
                attempts.hit(f"name:{name}")
            except Refused:
                return False
        expected = users.get(name)
        return expected is not None and hmac.compare_digest(expected.encode(), str(password).encode())

    return check


class RateLimit:
    """At most ``count`` events per ``seconds`` per key (a sliding window); ``message`` is the refusal's sentence
    (``{count}`` and ``{seconds}`` filled in)."""

    def __init__(self, count: int, seconds: float, message: str = "You are answering faster than {count} images in "
                 "{seconds:g} seconds; wait a moment, then go on."):
        self.count, self.seconds, self.message = count, seconds, message
        self._events: dict[str, deque] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> None:
        now = time.monotonic()
        with self._lock:
            events = self._events.setdefault(key, deque())
            while events and now - events[0] > self.seconds:
                events.popleft()
            if len(events) >= self.count:
                raise Refused(self.message.format(count=self.count, seconds=self.seconds))
            events.append(now)
            if len(self._events) > 100_000:  # keys of an hour-old burst: forget those with nothing in the window
                self._events = {k: v for k, v in self._events.items() if v and now - v[-1] <= self.seconds}


SIGN_IN_REFUSED = "Too many sign-in attempts; wait a few minutes, then try again."


def sign_in_limit(per: str) -> RateLimit:
    """Sign-in attempts in 5 minutes: 10 per ``"name"`` (:func:`password_check`), 30 per ``"address"``
    (:class:`d3s.gate.Gate`: reviewers behind one network share an address)."""
    return RateLimit({"name": 10, "address": 30}[per], 300.0, SIGN_IN_REFUSED)


class UploadBudget:
    """At most ``max_bytes`` and ``max_files`` of uploads per client address in ``seconds`` (uploads need no job or
    session, so this is their only bound besides Gradio's per-file cap)."""

    def __init__(self, max_bytes: int = 100 * 2**20, max_files: int = 50, seconds: float = 3600.0):
        self.max_bytes, self.max_files, self.seconds = max_bytes, max_files, seconds
        self._spent: dict[str, deque] = {}
        self._lock = threading.Lock()

    def charge(self, client: str, size: int) -> None:
        now = time.monotonic()
        with self._lock:
            spent = self._spent.setdefault(client, deque())
            while spent and now - spent[0][0] > self.seconds:
                spent.popleft()
            if len(spent) >= self.max_files or sum(n for _, n in spent) + size > self.max_bytes:
                raise Refused(f"Your address has uploaded as much as this demo accepts in an hour "
                              f"({self.max_files} files or {self.max_bytes // 2**20} MB); try again later.")
            spent.append((now, size))


def allowed_origin(origin: str, host: str | None, space_host: str | None = None) -> bool:
    """Whether a request's ``Origin`` is the app's own (its ``Host``, or the Space's ``SPACE_HOST``) or the page a
    Space is framed in (https://huggingface.co). A page elsewhere may not act with a visitor's cookies."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(origin)
        netloc = parts.netloc.lower()
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not netloc:
        return False
    own = {h.lower() for h in (host, space_host) if h}
    return netloc in own or (parts.scheme == "https" and netloc == "huggingface.co")


@dataclass
class Reviewers:
    """Who may review, and as whom.

    ``mode`` is ``"oauth"`` (a Space with ``hf_oauth``: the signed-in Hugging Face username), ``"password"``
    (``--review-auth``: the name signed in with Gradio's login), ``"typed"`` (a private bind: the operator's own
    machine, where the name typed in the tab is trusted) or ``"off"`` (a public bind without sign-in: no Review tab).
    """

    mode: str
    rate: RateLimit = field(default_factory=lambda: RateLimit(120, 60.0))

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def name(self, typed: str | None, request=None, profile=None) -> str:
        """The reviewer of a request; refused when nobody is signed in (or, typed, when the name is not valid)."""
        from .review import valid_reviewer

        if self.mode == "oauth":
            name = getattr(profile, "username", None)
        elif self.mode == "password":
            name = getattr(request, "username", None)
        elif self.mode == "typed":
            name = (typed or "").strip()
            if not valid_reviewer(name):
                raise Refused("Enter a reviewer name of 1 to 64 letters, digits or ._@- first.")
        else:
            name = None
        if not name:
            raise Refused("Sign in first: answers are recorded under your signed-in name.")
        return name


def reviewers_mode(public: bool, review_auth: bool, oauth: bool) -> str:
    """How reviewers are identified (see :class:`Reviewers`)."""
    if oauth:
        return "oauth"
    if review_auth:
        return "password"
    return "off" if public else "typed"
