"""Install and no-op re-sync time of sync.py on 200 generated skills, beside `cp -r` of the same tree.

    python bench/sync_bench.py [--skills 200] [--repeat 5]

Goals (issue 2): first install <= 3x cp -r; no-op re-sync <= 0.3 s.
"""
import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_bundle(path: Path, n: int) -> None:
    (path / "skills").mkdir(parents=True)
    shutil.copy(ROOT / "sync.py", path / "sync.py")
    for i in range(n):
        d = path / "skills" / f"cat{i % 10}" / f"skill-{i:03d}"
        (d / "references").mkdir(parents=True)
        (d / "SKILL.md").write_text(f"---\nname: skill-{i:03d}\ndescription: generated {i}\nversion: 1.0.0\n"
                                    f"tags: [bench]\n---\n\n" + "text\n" * 200)
        for j in range(3):
            (d / "references" / f"r{j}.md").write_text(f"reference {j} of {i}\n" * 300)
    subprocess.run([sys.executable, str(path / "sync.py"), "--write-manifest"], check=True, capture_output=True)


def timed(cmd) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skills", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_bundle(tmp / "bundle", args.skills)
        cp, install, noop = [], [], []
        for r in range(args.repeat):  # alternate the two so machine noise hits both alike
            cp.append(timed(["cp", "-r", str(tmp / "bundle/skills"), str(tmp / f"cp{r}")]))
            install.append(timed([sys.executable, str(tmp / "bundle/sync.py"), "--target", str(tmp / f"t{r}")]))
            noop.append(timed([sys.executable, str(tmp / "bundle/sync.py"), "--target", str(tmp / f"t{r}")]))
    res = {"skills": args.skills, "cp_r_s": statistics.median(cp), "install_s": statistics.median(install),
           "noop_resync_s": statistics.median(noop)}
    res["install_over_cp"] = res["install_s"] / res["cp_r_s"]
    print(json.dumps(res, indent=2))
    print(f"install {res['install_s']:.3f}s = {res['install_over_cp']:.2f}x cp -r ({res['cp_r_s']:.3f}s); "
          f"no-op re-sync {res['noop_resync_s']:.3f}s  [goal: <= 3x, <= 0.3 s]")
    return res


if __name__ == "__main__":
    main()
