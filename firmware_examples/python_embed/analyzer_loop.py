#!/usr/bin/env python3
"""The smallest analyzer loop around edgereg's Python API: frames in, one JSON reading per frame out.

    python analyzer_loop.py model.int8.onnx --source 0                  # camera 0
    python analyzer_loop.py model.onnx --source sample.mp4 --frames 50  # a recorded sample

The Predictor configures itself from the model card (crop, normalization, units, TTA); replace the
print with whatever the analyzer does with a reading. `edgereg infer --camera` adds a frame quality
gate, smoothing and camera retries on top of this loop.
"""

import argparse
import json
import sys

import cv2

from edgereg import Predictor


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Read values from camera frames with an edgereg model.")
    parser.add_argument("model", help="an .onnx model exported by edgereg")
    parser.add_argument("--source", default="0", help="camera index, video file or stream URL (default 0)")
    parser.add_argument("--frames", type=int, help="stop after this many frames")
    args = parser.parse_args(argv)

    predictor = Predictor(args.model)
    capture = cv2.VideoCapture(int(args.source) if args.source.isdigit() else args.source)
    if not capture.isOpened():
        print(f"analyzer_loop: cannot open video source {args.source!r}", file=sys.stderr)
        return 2
    frame_number = 0
    try:
        while args.frames is None or frame_number < args.frames:
            ok, frame = capture.read()  # (H, W, 3) uint8 BGR
            if not ok:
                break
            reading = next(predictor.predict([frame]).rows())  # {target: value in physical units, ...}
            print(json.dumps({"frame": frame_number, **reading}), flush=True)
            frame_number += 1
    finally:
        capture.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
