"""The page in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``).

One browser serves the whole module. Alerts are caught by a hook installed before any page
script runs, so a hostile model that managed to run script would be seen.
"""

from __future__ import annotations

import shutil
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compiler.ir import Graph
from tests.viz.vizgraphs import HOSTILE, big_graph, hostile_graph
from tools.viz import write_html

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed "
                                "(pip install -e '.[dev]')")
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="needs Debian's chromium and chromium-driver "
                              "(apt-get install chromium chromium-driver)"),
    pytest.mark.skipif(shutil.which("dot") is None, reason="needs Graphviz 'dot'"),
]

_ALERT_HOOK = """
window.__alerts = [];
window.alert = window.confirm = window.prompt = function (m) { window.__alerts.push(String(m)); };
"""


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,900", "--disable-extensions"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    d.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": _ALERT_HOOK})
    try:
        yield d
    finally:
        d.quit()


def open_page(driver: Any, path: Path) -> list[dict[str, Any]]:
    """Load ``path``, wait until the script has drawn, return the browser log of the load."""
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(path.as_uri())
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script("return document.body.getAttribute('data-ready')") == "1")
    return list(driver.get_log("browser"))


def no_alert(driver: Any) -> None:
    try:
        alert = driver.switch_to.alert
    except NoAlertPresentException:
        pass
    else:
        text = alert.text
        alert.dismiss()
        raise AssertionError(f"an alert fired: {text!r}")
    assert driver.execute_script("return window.__alerts") == []


def click_node(driver: Any, css: str) -> Any:
    el = driver.find_element(By.CSS_SELECTOR, css)
    driver.execute_script("arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))",
                          el)
    return el


def png_pixels(png: bytes) -> np.ndarray:
    """Decode an 8-bit, non-interlaced RGB/RGBA PNG (what Chromium writes) into an array."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    height = channels = 0
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        body = png[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and interlace == 0 and color in (2, 6)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int64)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int64)
        if f == 0:
            cur = line
        elif f == 1:  # Sub: a running sum along each channel
            cur = np.cumsum(line.reshape(width, channels), axis=0).reshape(-1) & 0xFF
        elif f == 2:  # Up
            cur = (line + prev) & 0xFF
        else:  # Average and Paeth depend on the pixel to the left: one byte at a time
            out = bytearray(stride)
            up = prev.tolist()
            for x, v in enumerate(line.tolist()):
                a = out[x - channels] if x >= channels else 0
                b = up[x]
                if f == 3:
                    pred = (a + b) // 2
                else:
                    c = up[x - channels] if x >= channels else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                out[x] = (v + pred) & 0xFF
            cur = np.frombuffer(bytes(out), np.uint8).astype(np.int64)
        rows[y] = cur
        prev = cur
    return rows.reshape(height, width, channels)


@pytest.fixture(scope="module")
def resnet_page(tmp_path_factory: pytest.TempPathFactory, resnet: Graph) -> Path:
    path = tmp_path_factory.mktemp("viz") / "resnet.html"
    write_html(path, resnet)
    return path


def test_page_loads_without_errors_and_draws(driver: Any, resnet_page: Path,
                                              resnet: Graph) -> None:
    log = open_page(driver, resnet_page)
    assert [e for e in log if e["level"] in ("SEVERE", "WARNING")] == []
    assert len(driver.find_elements(By.CSS_SELECTOR, "svg g.node")) == len(resnet.nodes)
    assert len(driver.find_elements(By.CSS_SELECTOR, "svg path.edge")) > len(resnet.nodes)
    assert len(driver.find_elements(By.CSS_SELECTOR, "svg rect.cluster")) >= 3


def test_click_node_shows_details(driver: Any, resnet_page: Path) -> None:
    open_page(driver, resnet_page)
    nodes = driver.find_elements(By.CSS_SELECTOR, "svg g.node")
    conv = next(n for n in nodes if n.find_element(By.CSS_SELECTOR, "text.op").text == "Conv")
    driver.execute_script("arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))",
                          conv)
    details = driver.find_element(By.ID, "details").text
    assert details.startswith("Conv conv2d")
    for expected in ("module", "conv1", "pass", "import", "kernel_shape", "[3, 3]",
                     "%x: f32[1,3,32,32]", "const %conv1.weight: f32[16,3,3,3]",
                     "%conv2d: f32[1,16,32,32]"):
        assert expected in details
    assert "selected" in conv.get_attribute("class")


def test_search_highlights_matches(driver: Any, resnet_page: Path, resnet: Graph) -> None:
    open_page(driver, resnet_page)
    box = driver.find_element(By.ID, "search")
    box.send_keys("batchnorm")
    WebDriverWait(driver, 5).until(
        lambda d: d.find_element(By.ID, "search-count").text != "")
    hits = driver.find_elements(By.CSS_SELECTOR, "svg g.node.hit")
    want = sum(n.op == "BatchNormalization" for n in resnet.nodes)
    assert len(hits) == want == 6
    assert driver.find_element(By.ID, "search-count").text == "6 matches"


def test_collapsed_modules_open_and_close(driver: Any, tmp_path: Path) -> None:
    path = tmp_path / "big.html"
    write_html(path, big_graph(layers=8, blocks=2, per=20))  # 328 nodes: opens collapsed
    log = open_page(driver, path)
    assert [e for e in log if e["level"] == "SEVERE"] == []
    groups = driver.find_elements(By.CSS_SELECTOR, "svg g.group")
    assert len(groups) == 8 and driver.find_elements(By.CSS_SELECTOR, "svg g.node") == []
    click_node(driver, "svg g.group")
    assert len(driver.find_elements(By.CSS_SELECTOR, "svg g.group")) == 2  # the two blocks
    assert len(driver.find_elements(By.CSS_SELECTOR, "svg g.node")) == 1  # the residual Add
    crumbs = driver.find_element(By.CSS_SELECTOR, ".crumbs").text
    assert "layers" in crumbs and "0" in crumbs
    driver.find_element(By.CSS_SELECTOR, ".crumbs button.up").click()
    assert len(driver.find_elements(By.CSS_SELECTOR, "svg g.group")) == 8


def test_diff_view_marks_added_nodes(driver: Any, tmp_path: Path, resnet: Graph,
                                     resnet_fused: Graph) -> None:
    path = tmp_path / "diff.html"
    write_html(path, resnet_fused, before=resnet)
    log = open_page(driver, path)
    assert [e for e in log if e["level"] == "SEVERE"] == []
    assert driver.find_element(By.ID, "mode").get_attribute("value") == "diff"
    added = driver.find_elements(By.CSS_SELECTOR, "#pane-after svg g.node.diff-added")
    removed = driver.find_elements(By.CSS_SELECTOR, "#pane-before svg g.node.diff-removed")
    assert len(added) == 6 and len(removed) == 12
    fill = added[0].find_element(By.TAG_NAME, "rect").get_attribute("fill")
    assert fill == "#86efac"
    assert "+6 added" in driver.find_element(By.ID, "bar").text
    assert "added (6)" in driver.find_element(By.ID, "legend").text
    click_node(driver, "#pane-after svg g.node.diff-added")
    assert "diff added" in driver.find_element(By.ID, "details").text


def test_hostile_model_injects_nothing(driver: Any, tmp_path: Path) -> None:
    path = tmp_path / "hostile.html"
    write_html(path, hostile_graph(), title=HOSTILE)
    open_page(driver, path)
    no_alert(driver)
    assert driver.find_elements(By.TAG_NAME, "img") == []
    assert driver.find_elements(By.TAG_NAME, "iframe") == []
    assert driver.find_elements(By.CSS_SELECTOR, "#panes svg svg") == []
    assert driver.title == HOSTILE
    click_node(driver, "svg g.node")
    details = driver.find_element(By.ID, "details").text
    assert HOSTILE in details and "<img src=x onerror=alert(5)>" in details
    for view_click in ("svg g.cluster-label", "svg g.port"):
        click_node(driver, view_click)
    no_alert(driver)
    assert driver.find_elements(By.TAG_NAME, "img") == []


def test_screenshot_is_not_blank(driver: Any, resnet_page: Path, tmp_path: Path) -> None:
    open_page(driver, resnet_page)
    png = driver.get_screenshot_as_png()
    (tmp_path / "shot.png").write_bytes(png)
    px = png_pixels(png)[:, :, :3]
    assert px.shape[0] > 500 and px.shape[1] > 1000
    graph_area = px[100:, : px.shape[1] - 380]  # below the bars, left of the details panel
    assert graph_area.std() > 10
    assert len(np.unique(graph_area.reshape(-1, 3), axis=0)) > 50


def test_overlay_is_a_heat_colour_mode(driver: Any, tmp_path: Path, resnet: Graph) -> None:
    path = tmp_path / "cost.html"
    names = [n.outputs[0].name for n in resnet.nodes]
    write_html(path, resnet, overlay={"cost": {name: float(i) for i, name in enumerate(names)}},
               units={"cost": "us on htp-v75"})
    open_page(driver, path)
    driver.execute_script("const s = document.getElementById('mode'); s.value = 'cost';"
                          "s.dispatchEvent(new Event('change'));")
    fills = [n.find_element(By.TAG_NAME, "rect").get_attribute("fill")
             for n in driver.find_elements(By.CSS_SELECTOR, "svg g.node")]
    assert fills[0] == "rgb(255,247,236)" and fills[-1] == "rgb(179,0,0)"
    assert len(set(fills)) == len(names)
    legend = driver.find_element(By.ID, "legend").text
    assert "cost: 0.00" in legend and "22.0 us on htp-v75" in legend
    click_node(driver, "svg g.node")
    assert "cost 0 us on htp-v75" in driver.find_element(By.ID, "details").text


def test_ten_thousand_node_page_opens_collapsed_and_fast(driver: Any, tmp_path: Path) -> None:
    import time

    path = tmp_path / "big10k.html"
    g = big_graph()  # 10,040 nodes under layers.L.blockB.opK
    write_html(path, g)
    t0 = time.perf_counter()
    log = open_page(driver, path)
    load_s = time.perf_counter() - t0
    assert [e for e in log if e["level"] == "SEVERE"] == []
    assert load_s < 15, load_s
    # opens on the 40 layer modules, not on 10,000 boxes
    assert len(driver.find_elements(By.CSS_SELECTOR, "svg g.group")) == 40
    assert driver.find_elements(By.CSS_SELECTOR, "svg g.node") == []
    t0 = time.perf_counter()
    click_node(driver, "svg g.group")  # open a layer: its 5 blocks and the residual Add
    assert len(driver.find_elements(By.CSS_SELECTOR, "svg g.group")) == 5
    click_node(driver, "svg g.group")  # open a block: its 10 op modules
    assert len(driver.find_elements(By.CSS_SELECTOR, "svg g.group")) == 10
    assert time.perf_counter() - t0 < 5
    box = driver.find_element(By.ID, "search")
    box.send_keys("Sigmoid")
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "search-count").text != "")
    assert driver.find_element(By.ID, "search-count").text == f"{sum(n.op == 'Sigmoid' for n in g.nodes)} matches"
