"""The example workflows in ComfyUI's own frontend (the `comfyui-frontend-package` each host
requires), in headless Chromium, as a newcomer meets them: from the template browser to the graph.

Per host (0.3.75 and 0.33.0), one server with the pack in `custom_nodes/` and one browser page:
- the template browser groups our workflows under "SeedVR2 BlockSwap" (not the clone's folder
  name), each card with its title and its thumbnail (`workflows/<name>.jpg`), and a search for
  "SeedVR2 BlockSwap" finds them;
- each workflow, opened from its card, resolves every node (no missing or red node), opens clean
  (no toast, alert or dialog: the pack places the sample clip/still it names into `input/`), shows
  every node whole inside the page with no title or body under the UI (tab bar, toolbar, sidebar,
  minimap), no node overlapping another and no link hidden behind a node;
- hovering each widget and the title of our nodes shows the tooltip and description the node
  defines (compared with `/object_info`).
Screenshots land in SEEDVR2_SCREENSHOT_DIR (default: the test's temp dir); with
SEEDVR2_UPDATE_DOCS=1 they also replace `docs/screenshots/` and the workflows' thumbnails.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest

from .browser import Chromium, find_chromium
from .conftest import HOSTS, PACK_FOLDER, REPO, AcceptanceReport, ComfyInstall, comfy_tree
from .harness import ComfyServer
from .workflow import example_files

pytestmark = pytest.mark.frontend

VIEWPORT = (1600, 900)  # a laptop browser window
GROUP_TITLE = "SeedVR2 BlockSwap"  # the template browser's group for this pack (locales/en/main.json)
SAMPLES = ("seedvr2_blockswap_sample.mp4", "seedvr2_blockswap_sample.png")
DOCS = REPO / "docs" / "screenshots"
PAGE_JS = (Path(__file__).with_name("frontend_page.js")).read_text()
NEWEST = HOSTS[-1]


def _update_docs() -> bool:
    return os.environ.get("SEEDVR2_UPDATE_DOCS", "").lower() in ("1", "true", "yes", "on")


@pytest.fixture(scope="session")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip("Chromium not found: install Debian's `chromium` package (.ci/run does), "
                    "or set SEEDVR2_CHROMIUM to its executable")
    return path


@pytest.fixture(scope="session")
def screenshot_dir(comfy_install: ComfyInstall, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = os.environ.get("SEEDVR2_SCREENSHOT_DIR")
    root = Path(base) if base else tmp_path_factory.mktemp("screenshots")
    folder = root / f"comfyui-{comfy_install.version}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def frontend_server(comfy_install: ComfyInstall, tmp_path_factory: pytest.TempPathFactory,
                    acceptance_report: AcceptanceReport) -> ComfyServer:
    """A server of its own (fresh ComfyUI copy: nothing in input/ but what the pack places)."""
    root = comfy_tree(comfy_install, tmp_path_factory.mktemp(f"frontend-{comfy_install.version}"))
    server = ComfyServer(comfy_install.python, root, root.parent / "comfyui.log")
    seconds = server.start()
    frontend = subprocess.run([str(comfy_install.python), "-c", "from importlib.metadata import version; "
                               "print(version('comfyui-frontend-package'))"], capture_output=True, text=True,
                              timeout=60).stdout.strip()
    acceptance_report.add(f"[{comfy_install.version}] frontend server up in {seconds:.0f}s "
                          f"(comfyui-frontend-package {frontend})")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def page(chromium: str, frontend_server: ComfyServer, tmp_path_factory, acceptance_report) -> Chromium:
    """The frontend, loaded and ready, with the first-run notices dismissed."""
    folder = tmp_path_factory.mktemp("chromium")
    browser = Chromium(chromium, folder / "profile", folder / "chromium.log", *VIEWPORT)
    browser.start()
    t0 = time.monotonic()
    browser.navigate(frontend_server.url)
    browser.wait_for("!!(window.app && app.graph && app.canvas && window.LiteGraph)", 180, "the frontend to start")
    browser.wait_for("app.graph._nodes.length > 0 || !!document.querySelector('[role=dialog]')", 60,
                     "the first-run graph or template browser")
    browser.evaluate(PAGE_JS)
    acceptance_report.add(f"[{frontend_server.get_json('/system_stats')['system']['comfyui_version']}] "
                          f"frontend loaded in {time.monotonic() - t0:.1f}s")
    yield browser
    browser.stop()


def _names() -> list[str]:
    return [p.stem for p in example_files()]


# ------------------------------------------------------------------------------------------------
# The template browser.

_OPEN_GROUP = """(async (label) => {
  await app.extensionManager.command.execute('Comfy.BrowseTemplates');
  for (let i = 0; i < 100; i++) {
    const item = [...document.querySelectorAll('[role=dialog] [role=button], [role=dialog] button, [role=dialog] li, [role=dialog] a')]
      .find(e => e.innerText && e.innerText.trim() === label);
    if (item) { item.click(); return true; }
    await new Promise(r => setTimeout(r, 200));
  }
  return [...document.querySelectorAll('[role=dialog] span')].map(e => e.innerText.trim()).filter(Boolean).slice(0, 80);
})(%s)"""

_CARDS = """(() => [...document.querySelectorAll('[data-testid^="template-workflow-"]')].map(card => ({
  name: card.getAttribute('data-testid').replace('template-workflow-', ''),
  title: (card.querySelector('h3') || {}).innerText || '',
  text: card.innerText.trim(),
  images: [...card.querySelectorAll('img')].map(i => ({src: i.src, loaded: i.complete && i.naturalWidth > 0})),
})))()"""

_THUMB = """(async (name, url) => {
  const img = document.querySelector(`[data-testid="template-workflow-${name}"] img`);
  const r = await fetch(url);
  if (!r.ok) return {status: r.status};
  const bmp = await createImageBitmap(await r.blob());
  return {status: r.status, file: [bmp.width, bmp.height], shown: img ? [img.naturalWidth, img.naturalHeight] : null};
})(%s, %s)"""

_SEARCH = """(async (query) => {
  const box = [...document.querySelectorAll('[role=dialog] input')].find(i => /search/i.test(i.placeholder || ''));
  if (!box) return null;
  box.focus(); box.value = query; box.dispatchEvent(new Event('input', {bubbles: true}));
  await new Promise(r => setTimeout(r, 1500));
  return [...document.querySelectorAll('[data-testid^="template-workflow-"]')].map(c => c.getAttribute('data-testid').replace('template-workflow-', ''));
})(%s)"""


def _open_templates(page: Chromium) -> list[dict]:
    page.evaluate("window.__svr2.closeNotices()")
    found = page.evaluate(_OPEN_GROUP % json.dumps(GROUP_TITLE), timeout=60)
    assert found is True, f"the template browser has no group titled {GROUP_TITLE!r}; its entries: {found}"
    return page.wait_for(f"(() => {{ const c = {_CARDS}; return c.length >= {len(_names())} && "
                         "c.every(x => x.images.length > 0 && x.images.every(i => i.loaded)) ? c : null; })()", 30,
                         "our template cards with their images")


def test_template_cards_have_titles_and_thumbnails(page, frontend_server, screenshot_dir, acceptance_report):
    cards = {c["name"]: c for c in _open_templates(page)}
    page.screenshot(screenshot_dir / "templates.png")
    assert sorted(cards) == sorted(_names()), f"cards {sorted(cards)}, workflows/ has {_names()}"
    for name, card in cards.items():
        assert card["title"].strip() == name, f"card {name!r} is titled {card['title']!r}"
        assert "_" not in name and GROUP_TITLE in name, \
            f"{name!r}: a card's title is its file name, which must read as a title naming the pack"
        url = f"/api/workflow_templates/{urllib.parse.quote(PACK_FOLDER)}/{urllib.parse.quote(name)}.jpg"
        thumb = page.evaluate(_THUMB % (json.dumps(name), json.dumps(url)), timeout=30)
        assert thumb["status"] == 200, f"card {name!r}: GET {url} answered {thumb['status']}"
        assert thumb["shown"] == thumb["file"], \
            f"card {name!r} shows a {thumb['shown']} picture, not its {thumb['file']} thumbnail {url}"
    found = page.evaluate(_SEARCH % json.dumps(GROUP_TITLE), timeout=30)
    assert found is not None, "the template browser has no search box"
    assert set(_names()) <= set(found), f"searching {GROUP_TITLE!r} finds {found}, not all of {_names()}"
    acceptance_report.add(f"templates: {len(cards)} cards with titles and thumbnails under {GROUP_TITLE!r}")


# ------------------------------------------------------------------------------------------------
# Each workflow, opened from its card.

def _open_workflow(page: Chromium, name: str) -> list[dict]:
    _open_templates(page)
    clicked = page.evaluate(f"""(() => {{ const c = document.querySelector('[data-testid="template-workflow-{name}"]');
        if (!c) return false; (c.querySelector('img') || c).click(); return true; }})()""")
    assert clicked, f"no template card for {name}"
    want = len(json.loads((REPO / "workflows" / f"{name}.json").read_text())["nodes"])
    page.wait_for(f"!document.querySelector('[data-testid^=\"template-workflow-\"]') && app.graph._nodes.length === {want}",
                  60, f"{name} to open from its card")
    time.sleep(3)  # let the frontend finish its checks (missing media/models toasts come a moment later)
    return page.evaluate("window.__svr2.nodes()")


def _hover(page: Chromium, point: list[float]) -> str | None:
    """The node tooltip shown when the mouse comes to rest on `point` (None if none shows)."""
    park = page.evaluate("window.__svr2.parkPoint()")
    assert park, "no bare canvas to park the mouse on"
    page.mouse("mouseMoved", *park)  # closes any tooltip
    page.wait_for("!window.__svr2.tooltip()", 5, "the previous tooltip to close")
    page.mouse("mouseMoved", point[0] - 3, point[1])
    page.mouse("mouseMoved", point[0], point[1])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        text = page.evaluate("window.__svr2.tooltip()")
        if text:
            return text
        time.sleep(0.15)
    return None


@pytest.mark.parametrize("name", _names() or ["(no example workflow in workflows/)"])
def test_workflow_opens_clean_and_readable(page, frontend_server, comfy_install, screenshot_dir, acceptance_report,
                                           name):
    nodes = _open_workflow(page, name)
    shot = page.screenshot(screenshot_dir / f"{name}.png")
    problems = []
    missing = [n["type"] for n in nodes if not n["registered"]]
    if missing:
        problems.append(f"node types the frontend does not know (missing nodes): {missing}")
    red = [n["title"] for n in nodes if n["has_errors"]]
    if red:
        problems.append(f"red nodes: {red}")
    notices = page.evaluate("window.__svr2.notices()")
    if notices:
        problems.append(f"notices on open: {notices}")
    covered = page.evaluate("window.__svr2.covered()")
    if covered:
        problems.append("covered or cut off: " + "; ".join(f"{c['node']} {c['part']} at {c['at']} by {c['by']}"
                                                            for c in covered))
    overlaps = page.evaluate("window.__svr2.overlaps()")
    if overlaps:
        problems.append(f"overlapping nodes: {overlaps}")
    hidden = page.evaluate("window.__svr2.hiddenLinks()")
    if hidden:
        problems.append(f"links behind nodes: {hidden}")
    assert not problems, (f"{name} on ComfyUI {comfy_install.version} (screenshot {shot}):\n- "
                          + "\n- ".join(problems) + f"\npage problems: {page.problems[-5:]}")

    info = frontend_server.object_info()
    checked = 0
    for node in nodes:
        if not node["type"].startswith("SVR2BS_"):
            continue
        spec = info[node["type"]]
        want = spec["description"].strip()
        got = _hover(page, page.evaluate(f"window.__svr2.titlePoint({json.dumps(node['id'])})"))
        assert got and got.strip() == want, f"{node['title']}: hovering the title shows {got!r}, expected {want!r}"
        inputs = {**spec["input"].get("required", {}), **spec["input"].get("optional", {})}
        for widget in node["widgets"]:
            if widget not in inputs:
                continue  # the frontend's own (control_after_generate)
            want = inputs[widget][1]["tooltip"].strip()
            got = _hover(page, page.evaluate(f"window.__svr2.widgetPoint({json.dumps(node['id'])}, {json.dumps(widget)})"))
            assert got and got.strip() == want, \
                f"{node['title']}: hovering widget {widget} shows {got!r}, expected {want!r}"
            checked += 1
    page.mouse("mouseMoved", *page.evaluate("window.__svr2.parkPoint()"))

    thumb = screenshot_dir / f"{name}.jpg"  # the graph alone: the minimap is hidden for it
    page.evaluate("app.extensionManager.setting.set('Comfy.Minimap.Visible', false)")
    time.sleep(0.5)
    x, y, w, h = page.evaluate("window.__svr2.graphRect()")
    pad = 12
    page.screenshot(thumb, clip={"x": max(x - pad, 0), "y": max(y - pad, 0), "width": w + 2 * pad,
                                 "height": h + 2 * pad, "scale": min(1.0, 640 / (w + 2 * pad))}, quality=82)
    page.evaluate("app.extensionManager.setting.set('Comfy.Minimap.Visible', true)")
    if _update_docs() and comfy_install.version == NEWEST:
        shutil.copyfile(thumb, REPO / "workflows" / f"{name}.jpg")
    if _update_docs():
        target = DOCS / f"comfyui-{comfy_install.version}"
        target.mkdir(parents=True, exist_ok=True)
        for f in (shot, screenshot_dir / "templates.png"):
            if f.exists():
                shutil.copyfile(f, target / f.name)
    acceptance_report.add(f"[{comfy_install.version}] {name}: {len(nodes)} nodes clean, titles visible, no overlap; "
                          f"{checked} widget tooltips checked; screenshot {shot}")


def test_samples_are_in_input_and_unchanged(frontend_server):
    """What the workflows name in their loaders is in the server's input/, byte for byte ours."""
    for sample in SAMPLES:
        placed = frontend_server.root / "input" / sample
        assert placed.is_file(), f"{sample} is not in {placed.parent}: {sorted(os.listdir(placed.parent))}"
        assert placed.read_bytes() == (REPO / "assets" / sample).read_bytes()


def test_browser_reported_no_page_errors(page):
    """Uncaught exceptions in the frontend while we used it (network errors of the closed machine aside)."""
    errors = [p for p in page.problems if p.startswith("uncaught:")]
    assert not errors, errors

