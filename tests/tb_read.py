#!/usr/bin/env python3
"""Reads a TensorBoard event directory with TensorBoard's own EventAccumulator and prints
one line per scalar/histogram/image event (tests/test_metrics.c checks them).
Exit 77 with a 'skipped:' line when the tensorboard package is not installed."""
import sys

try:
    from tensorboard.backend.event_processing import event_accumulator as ea
except Exception as e:  # ImportError, or a broken install
    print("skipped: python3 cannot import tensorboard (%s); pip install tensorboard" % e)
    sys.exit(77)

acc = ea.EventAccumulator(sys.argv[1], size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.IMAGES: 0})
acc.Reload()
tags = acc.Tags()
for tag in sorted(tags["scalars"]):
    for s in acc.Scalars(tag):
        print("scalar %s %d %.9g" % (tag, s.step, s.value))
for tag in sorted(tags["histograms"]):
    for h in acc.Histograms(tag):
        v = h.histogram_value
        print("histo %s %d num=%g limits=%s buckets=%s" % (tag, h.step, v.num, ",".join("%g" % x for x in v.bucket_limit),
                                                          ",".join("%g" % x for x in v.bucket)))
for tag in sorted(tags["images"]):
    for im in acc.Images(tag):
        png = im.encoded_image_string
        colors = "?"
        try:
            import io
            from PIL import Image
            img = Image.open(io.BytesIO(png)).convert("RGB")
            colors = str(len(set(img.getdata())))
            assert img.size == (im.width, im.height)
        except ImportError:
            pass
        print("image %s %d %dx%d png=%s colors=%s" % (tag, im.step, im.width, im.height, png[:4] == b"\x89PNG", colors))
