"""report.html in a real headless browser (Chromium): it loads, its script runs without errors, and the charts,
tables and gallery are on the page; screenshots of a 3-round and a 300-round report, on a laptop and a phone
screen, are written for a person to look at (``UNETSEG_SCREENSHOTS=DIR`` keeps them; default: pytest's tmp dir).

Skips where no Chromium is installed (``.ci/run`` installs Debian's ``chromium``).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unetseg.data.classmap import ClassMap
from unetseg.tracking.runlog import RunLog

BROWSER = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no chromium binary found (apt-get install chromium)")
SCREENS = {"laptop": (1280, 2400), "phone": (390, 2400)}


def chromium(page: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr"]
    return subprocess.run(
        [BROWSER, *flags, *args, page.as_uri()], capture_output=True, text=True, timeout=120, check=False
    )


def panels(count: int, size: int = 48) -> list[dict]:
    rng = np.random.default_rng(0)
    made = []
    for i in range(count):
        truth = np.zeros((size, size), np.uint8)
        truth[8 : 8 + 4 * (i + 1), 10:30] = 1
        pred = np.roll(truth, 3 * i, axis=1)
        image = (rng.random((size, size, 3)) * 80 + truth[:, :, None] * 150).astype(np.uint8)
        made.append({"name": f"img{i}.png", "image": image, "truth": truth, "pred": pred})
    return made


def write_run(folder: Path, rounds: int) -> Path:
    """A run log fed ``rounds`` validation rounds of synthetic scores, as the trainer feeds it."""
    class_map = ClassMap(values=[0, 255], names=["background", "nucleus"])
    folder.mkdir(parents=True)
    log = RunLog(folder, quiet=True)
    fields = {"data": "synthetic", "train_images": 40, "val_images": 4, "channels": 3, "notes": []}
    fields |= {"classes": [{"name": "background", "value": 0, "share": 0.8}, {"name": "nucleus", "value": 255}]}
    fields["classes"][1]["share"] = 0.2
    log.start([], fields | {"score": {"name": "dice_fg", "reason": "binary masks"}}, class_map, {"lr": 1e-3})
    for k in range(1, rounds + 1):
        lr = 1e-3 * min(1.0, k / 10) * 0.5 * (1 + math.cos(math.pi * k / (rounds + 1)))  # warm-up, then cosine
        dice = 0.199 + 1e-4 * k if rounds <= 3 else 0.9 - 0.7 * math.exp(-k / 40)
        row = {"step": 7 * k, "epoch": k, "train_loss": 1 / (1 + 0.05 * k), "val_loss": 1.1 / (1 + 0.04 * k)}
        row |= {"lr": lr, "dice_fg": dice, "dice_background": 0.97, "dice_nucleus": dice, "img_s": 40.0}
        if k < rounds and rounds > 3:
            log.metrics(row)  # the many-round page is drawn once, at the end, not 300 times
            continue
        log.validation(7 * k, row, torch.nn.Linear(1, 1), panels(4), True, confusion=[[9000, 300], [250, 1800]])
    log.event("done", ["done"], {"reason": "finished all epochs", "exit_code": 0})
    log.close()
    return folder / "report.html"


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("UNETSEG_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.slow  # a headless Chromium per page and screen: 5-6 s each on 2 CPU cores
@pytest.mark.parametrize("rounds", [3, 300])
def test_report_loads_without_errors_and_shows_everything(tmp_path, shots, rounds):
    page = write_run(tmp_path / f"run{rounds}", rounds)
    dom = chromium(page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-ready="1"' in dom.stdout  # the sorting script ran to its end: no exception on the way
    assert "Uncaught" not in dom.stderr and "CONSOLE" not in dom.stderr, dom.stderr[-2000:]
    assert dom.stdout.count('<img src="data:image/') == 3 + 1 + 4 * 4  # charts, confusion, tiles
    assert dom.stdout.count("<figure>") == 4 and "<table" in dom.stdout
    for screen, (width, height) in SCREENS.items():
        shot = shots / f"report-{rounds}-rounds-{screen}.png"
        taken = chromium(page, f"--window-size={width},{height}", f"--screenshot={shot}")
        assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
        picture = np.asarray(Image.open(shot).convert("RGB"))
        assert picture.shape[:2] == (height, width)
        assert len(np.unique(picture.reshape(-1, 3)[::7], axis=0)) > 200  # charts and images drawn, not blank
        print(f"screenshot: {shot}")


def test_clicking_a_header_sorts_the_table_by_number_with_empty_cells_last(tmp_path):
    from unetseg.tracking.html import page, table

    rows = [["a", 0.5], ["b", float("nan")], ["c", 10.0], ["d", 2.0]]
    click = '<script>document.querySelectorAll("th")[1].click();</script>'  # runs after the sorting script
    text = page("sort", "", [table(["image", "dice"], rows)]).replace("</body>", click + "</body>")
    path = tmp_path / "sort.html"
    path.write_text(text)
    dom = chromium(path, "--dump-dom")
    assert dom.returncode == 0 and 'aria-sort="ascending"' in dom.stdout, dom.stderr[-2000:]
    body = dom.stdout[dom.stdout.index("<tbody>") :]
    cells = [body.index(f'<td class="t">{n}</td>') for n in "adcb"]
    assert cells == sorted(cells)
