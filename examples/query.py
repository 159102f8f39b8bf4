"""Send one mixed-task request to a running `bitfit-deploy serve` and print the answers.

Standard library only, so it runs anywhere:  python examples/query.py --url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request

REQUESTS = [
    {"task": "sentiment", "input": "a gorgeous, witty, seductive movie ."},
    {"task": "question-type", "input": "How far is it from Denver to Aspen ?"},
    {
        "task": "sentiment",
        "input": "the plot is nothing but boilerplate clichés from start to finish .",
    },
    {"task": "question-type", "input": "Who wrote the novel Moby Dick ?"},
    {"task": "question-type", "input": "Where is the Eiffel Tower ?"},
]


def wait_ready(url: str, timeout_s: float) -> None:
    """Poll the Open Inference Protocol readiness route until the server answers 200."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.3)
    sys.exit(f"server at {url} not ready after {timeout_s:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--wait", type=float, default=120.0, help="seconds to wait for readiness")
    args = parser.parse_args()
    wait_ready(args.url, args.wait)
    body = json.dumps({"requests": REQUESTS}).encode()
    request = urllib.request.Request(
        f"{args.url}/v1/predict", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        answer = json.load(resp)
    print(f"POST /v1/predict with {len(REQUESTS)} rows for 2 tasks, answered in one mixed batch:")
    for req, pred in zip(REQUESTS, answer["predictions"], strict=True):
        print(f"  [{req['task']:>13}] {pred['label']:<9} {pred['score']:.2f}  {req['input']}")


if __name__ == "__main__":
    main()
