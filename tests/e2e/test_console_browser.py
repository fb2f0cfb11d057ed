"""The web console in headless Chromium (Debian's, driven by Playwright): what a user does.

Sign in, see the runner, start a sandbox from the page, watch its logs arrive live, type in
its terminal and see the output, read its graphs, stop it; a member of another organization
finds nothing. Sandbox-controlled HTML in the logs stays text. Screenshots of each page are
saved under ``bench/results/console/`` (printed) as test artifacts.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandboxd_protocol.sandboxd_v1 import admin_pb2
from tests.e2e.conftest import Platform
from tests.support.console import Console
from tests.support.processes import admin_call

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "console"
TIMEOUT_MS = 120_000

if CHROMIUM is None:  # scripts/setup.sh installs it; CI fails on a skip
    pytest.skip("needs Debian's chromium (scripts/setup.sh installs it)", allow_module_level=True)

from playwright.sync_api import Browser, Page, Route, expect, sync_playwright  # noqa: E402

expect.set_options(timeout=TIMEOUT_MS)  # a loaded CI machine: margins, not sleeps
XSS = "<img src=x onerror=window.__pwned=1><script>window.__pwned=2</script>"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield browser
        browser.close()


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"console screenshot: {path}")


def sign_in(page: Page, console: Console, api_key: str) -> None:
    page.goto(console.url)
    page.get_by_test_id("api-key").fill(api_key)
    page.get_by_test_id("sign-in").click()
    expect(page.get_by_test_id("who")).to_be_visible()


def member_key(platform: Platform, organization: str) -> str:
    response = admin_call(
        platform.target,
        platform.api_key,
        "CreateApiKey",
        admin_pb2.CreateApiKeyRequest(organization=organization, role=admin_pb2.ROLE_MEMBER),
        admin_pb2.CreateApiKeyResponse,
    )
    return str(response.secret)


def test_a_user_runs_a_sandbox_from_the_console(browser: Browser, platform: Platform) -> None:
    console = Console.of(platform.proc)
    key_a = member_key(platform, "browser-a")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto(console.url)
    expect(page.get_by_test_id("api-key")).to_be_visible()
    shot(page, "sign-in")
    page.get_by_test_id("api-key").fill("sbxk_0000000000000000_wrong")
    page.get_by_test_id("sign-in").click()
    expect(page.get_by_test_id("sign-in-error")).to_contain_text("API key")

    # The administrator sees the runner, live capacity and the admin actions.
    sign_in(page, console, platform.api_key)
    runners = page.get_by_test_id("runners")
    expect(runners).to_contain_text(platform.runner_id)
    expect(runners).to_contain_text("healthy")
    expect(page.get_by_test_id("cordon")).to_be_visible()
    shot(page, "runners")
    page.goto(console.url + "#/profiles")
    expect(page.get_by_test_id("profiles")).to_contain_text(platform.runner_id)
    shot(page, "profiles")
    page.get_by_test_id("sign-out").click()
    expect(page.get_by_test_id("api-key")).to_be_visible()
    assert page.evaluate("document.cookie") == ""  # the session cookie is HttpOnly

    # A member starts a sandbox whose logs carry HTML; it must stay text.
    sign_in(page, console, key_a)
    expect(page.get_by_test_id("cordon")).to_have_count(0)  # no admin actions for a member
    page.goto(console.url + "#/sandboxes")
    script = f"echo '{XSS}'; i=0; while true; do i=$((i+1)); echo line-$i; sleep 0.5; done"
    page.get_by_test_id("start-command").fill(script)
    page.get_by_test_id("start-tags").fill("browser-test")
    page.get_by_test_id("start").click()
    page.wait_for_url("**/#/sandboxes/sb-*")
    sandbox_id = page.url.rsplit("/", 1)[1]
    logs = page.get_by_test_id("logs")
    expect(logs).to_contain_text("line-3")  # arrives live, after the page opened
    expect(logs).to_contain_text(XSS)  # shown as the characters it is
    assert logs.locator("img, script").count() == 0
    assert page.evaluate("window.__pwned") is None

    # The terminal: type a command, see its output.
    expect(page.locator(".xterm-rows")).to_contain_text("#")  # the shell's prompt
    page.locator(".xterm").click()
    page.keyboard.type("echo console-$((6*7))\n")
    expect(page.locator(".xterm-rows")).to_contain_text("console-42")
    graph = page.get_by_test_id("graph-memory")
    expect(graph).to_have_attribute("data-samples", "2")
    expect(page.get_by_test_id("sandbox-status")).to_have_text("running")
    expect(page.get_by_test_id("events")).to_contain_text("placed")
    shot(page, "sandbox")

    # The sandbox list, filtered by tag, shows it.
    page.goto(console.url + "#/sandboxes?tag=browser-test")
    expect(page.get_by_test_id("sandboxes")).to_contain_text(sandbox_id)
    shot(page, "sandboxes")

    # A member of another organization: the page and its API say "not found".
    other = browser.new_context()
    other.set_default_timeout(TIMEOUT_MS)
    stranger = other.new_page()
    sign_in(stranger, console, member_key(platform, "browser-b"))
    stranger.goto(console.url + f"#/sandboxes/{sandbox_id}")
    expect(stranger.locator("main")).to_contain_text("not found")
    expect(stranger.get_by_test_id("logs")).to_have_count(0)
    reply = stranger.request.get(console.url + f"api/sandboxes/{sandbox_id}")
    assert reply.status == 404
    stranger.goto(console.url + "#/sandboxes")
    expect(stranger.get_by_test_id("sandboxes")).not_to_contain_text(sandbox_id)
    other.close()

    # Stop it from its page.
    page.goto(console.url + f"#/sandboxes/{sandbox_id}")
    page.get_by_test_id("stop").click()
    ended = re.compile("completed|failed|terminated")
    try:
        expect(page.get_by_test_id("sandbox-status")).to_have_text(ended)
    except AssertionError as missed:  # seen once in CI: say what the page and platform saw
        raise AssertionError(_stop_report(page, platform, sandbox_id)) from missed
    context.close()


def _stop_report(page: Page, platform: Platform, sandbox_id: str) -> str:
    """What a failed Stop left to read: the page's error line and activity trail, and the
    platform's log lines about the sandbox (with the last lines of the log)."""
    shot(page, "stop-failed")
    error = page.get_by_test_id("sandbox-error").text_content(timeout=5_000)
    events = page.get_by_test_id("events").text_content(timeout=5_000)
    lines = platform.proc.lines
    about = [line for line in lines if sandbox_id in line]
    return (
        f"the sandbox did not end after Stop; page error: {error!r}\n"
        f"activity trail: {events}\n"
        "platform log about it:\n" + "\n".join(about[-40:]) + "\n"
        "platform log, last lines:\n" + "\n".join(lines[-60:])
    )


# Makes the page's reads of a sandbox's numbers slow (each answer held 3 s in the page's own
# ``fetch``, the server's reply real) and counts how many wait at once.
SLOW_STATS = """
(() => {
  const real = window.fetch.bind(window);
  window.__stats = { waiting: 0, most: 0, done: 0 };
  window.fetch = async (input, init) => {
    const url = typeof input === "string" ? input : input.url;
    if (!url.includes("/stats")) return real(input, init);
    const s = window.__stats;
    s.waiting += 1;
    s.most = Math.max(s.most, s.waiting);
    try {
      const reply = await real(input, init);
      await new Promise((resolve) => setTimeout(resolve, 3000));
      return reply;
    } finally {
      s.waiting -= 1;
      s.done += 1;
    }
  };
})();
"""


def open_a_new_sandbox(page: Page, platform: Platform, key_name: str) -> None:
    """Sign in with a new member key, start ``sleep 600`` from the list, land on its page."""
    sign_in(page, Console.of(platform.proc), member_key(platform, key_name))
    page.goto(Console.of(platform.proc).url + "#/sandboxes")
    page.get_by_test_id("start-command").fill("sleep 600")
    page.get_by_test_id("start").click()
    page.wait_for_url("**/#/sandboxes/sb-*")


def test_a_slow_platform_does_not_pile_up_the_pages_reads(
    browser: Browser, platform: Platform
) -> None:
    """The sandbox page reads again 2 s after a read has *finished*, not every 2 s: with
    reads slower than that, rounds on a timer piled up until the browser's six connections
    per host were all waiting, and a Stop click queued behind them. The slowness is the
    page's own ``fetch`` wrapped (a stand-in for a loaded platform; every answer is real)."""
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.add_init_script(SLOW_STATS)
    open_a_new_sandbox(page, platform, "browser-slow")
    expect(page.get_by_test_id("sandbox-status")).to_have_text("running")
    deadline = time.monotonic() + TIMEOUT_MS / 1000  # the page's CSP forbids wait_for_function
    while page.evaluate("window.__stats.done") < 3:
        assert time.monotonic() < deadline, "the page read the sandbox's numbers < 3 times"
        page.wait_for_timeout(200)
    assert page.evaluate("window.__stats.most") == 1  # each read waited alone
    page.get_by_test_id("stop").click()  # not queued behind reads
    expect(page.get_by_test_id("sandbox-status")).to_have_text(
        re.compile("completed|failed|terminated"), timeout=30_000
    )
    context.close()


def dropping(nth: int | range, seen: list[str], method: str = "GET") -> Callable[[Route], None]:
    """A route handler that fails the ``nth`` request of ``method`` (or each in a range of
    them) as a reset connection (what a dropped connection does to ``fetch``) and lets
    every other one through; ``seen`` gets the URL of each request of ``method``."""
    drop = range(nth, nth + 1) if isinstance(nth, int) else nth

    def handle(route: Route) -> None:
        if route.request.method != method:
            route.continue_()
            return
        seen.append(route.request.url)
        if len(seen) in drop:
            route.abort("connectionreset")
        else:
            route.continue_()

    return handle


def test_a_dropped_sign_in_is_sent_again(browser: Browser, platform: Platform) -> None:
    """A sign-in whose connection dropped (``Failed to fetch``) is sent again and signs in:
    a CI run's console stayed at its sign-in form after one such request. Another sign-in
    only makes another session, so it may be sent again (a Start may not): at most twice
    more, since on a loaded CI machine the second attempt once failed the same way."""
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    attempts: list[str] = []
    page.route(re.compile(r".*/api/session$"), dropping(1, attempts, method="POST"))
    sign_in(page, Console.of(platform.proc), member_key(platform, "browser-sign-in"))
    assert 2 <= len(attempts) <= 3, attempts  # the dropped one, then the same again
    assert len(set(attempts)) == 1, attempts
    expect(page.get_by_test_id("who")).to_contain_text("browser-sign-in")
    context.close()


def test_a_sign_in_dropped_twice_is_sent_a_third_time(browser: Browser, platform: Platform) -> None:
    """The sign-in's connection drops twice in a row (what a loaded CI machine did to the
    test above once): the third attempt signs in; there is no fourth."""
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    attempts: list[str] = []
    page.route(re.compile(r".*/api/session$"), dropping(range(1, 3), attempts, method="POST"))
    sign_in(page, Console.of(platform.proc), member_key(platform, "browser-sign-in-3"))
    assert len(attempts) == 3, attempts
    expect(page.get_by_test_id("who")).to_contain_text("browser-sign-in-3")
    context.close()


def test_a_failed_read_of_the_sandbox_page_is_read_again(
    browser: Browser, platform: Platform
) -> None:
    """One read of the sandbox failing as a dropped connection does (``Failed to fetch``)
    leaves the page reading on: the status shows at the next round. A CI run's page stayed
    empty after one such read for the test's whole two minutes. The failure is Playwright's
    abort of that one request: a network fault cannot be made to happen on cue otherwise.
    (The page's API sends a GET whose connection dropped once more, 250 ms later: the
    third read may be that one or the next round's.)
    """
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    reads: list[str] = []
    page.route(re.compile(r".*/api/sandboxes/sb-[^/?]+$"), dropping(2, reads))
    open_a_new_sandbox(page, platform, "browser-drop")
    expect(page.get_by_test_id("sandbox-status")).to_have_text("running")
    deadline = time.monotonic() + TIMEOUT_MS / 1000  # the page reads on every 2 s
    while len(reads) < 3 and time.monotonic() < deadline:
        page.wait_for_timeout(200)
    assert len(reads) >= 3  # the dropped one was read again
    expect(page.get_by_test_id("sandbox-status")).to_have_text("running")  # still shown
    page.get_by_test_id("stop").click()
    expect(page.get_by_test_id("sandbox-status")).to_have_text(
        re.compile("completed|failed|terminated"), timeout=30_000
    )
    context.close()


def test_a_read_with_no_answer_is_given_up_and_sent_again(
    browser: Browser, platform: Platform
) -> None:
    """The page's first read (``GET /api/session``) getting no answer at all is given up after
    10 s and sent once more, so the sign-in form appears. In a CI run such a read waited
    120 s and the page stayed blank: ``fetch`` never gives up on its own. The first read is
    held by the test (never answered, never failed); every other one is real."""
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    reads: list[Route] = []

    def hold_the_first(route: Route) -> None:
        if route.request.method != "GET":
            route.continue_()
            return
        reads.append(route)
        if len(reads) > 1:
            route.continue_()

    page.route(re.compile(r".*/api/session$"), hold_the_first)
    started = time.monotonic()
    sign_in(page, Console.of(platform.proc), member_key(platform, "browser-no-answer"))
    assert len(reads) >= 2  # the held read, then the same again
    assert time.monotonic() - started >= 9  # given up only after its 10 s
    context.close()


def test_a_dropped_first_read_of_a_page_is_sent_again(browser: Browser, platform: Platform) -> None:
    """The sandbox page's first read failing as a dropped connection (``Failed to fetch``)
    is sent again: the page shows the sandbox and its Stop. A CI run's page showed nothing
    but the error after such a read (a kept-alive connection closed by the server as the
    request went out). A dropped Start (a POST) is not sent again: it says so instead.
    """
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    reads: list[str] = []
    starts: list[str] = []
    page.route(re.compile(r".*/api/sandboxes/sb-[^/?]+$"), dropping(1, reads))
    page.route(re.compile(r".*/api/sandboxes$"), dropping(1, starts, method="POST"))
    sign_in(page, Console.of(platform.proc), member_key(platform, "browser-first"))
    page.goto(Console.of(platform.proc).url + "#/sandboxes")
    page.get_by_test_id("start-command").fill("sleep 600")
    page.get_by_test_id("start").click()
    expect(page.get_by_test_id("start-error")).to_contain_text("Failed to fetch")
    assert len(starts) == 1  # not sent again
    page.get_by_test_id("start").click()
    page.wait_for_url("**/#/sandboxes/sb-*")
    expect(page.get_by_test_id("sandbox-status")).to_have_text("running")
    assert len(reads) >= 2 and reads[0] == reads[1]  # the dropped read, then the same again
    page.get_by_test_id("stop").click()
    expect(page.get_by_test_id("sandbox-status")).to_have_text(
        re.compile("completed|failed|terminated"), timeout=30_000
    )
    context.close()
