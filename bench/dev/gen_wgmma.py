# Writes the wgmma inline-PTX wrappers of templates/mg_wgmma.cuh (N = 128, 256; bf16, f16).
# Usage: python3 bench/dev/gen_wgmma.py > /tmp/w.txt, then paste between the markers.
for n in (128, 256):
    nr = n // 2
    for ty, ptx in (("mg_bf16", "bf16"), ("mg_f16", "f16")):
        regs = ",".join("%%%d" % i for i in range(nr))
        print("template <> struct mg_wgmma_op<%d, %s> {" % (n, ty))
        print("    template <int TA, int TB> MG_DEV static void mma(float (&d)[%d], unsigned long long a, unsigned long long b)" % nr)
        print("    {")
        print('        asm volatile("{\\n.reg .pred p;\\nsetp.ne.b32 p, %%%d, 0;\\n"' % (nr + 2))
        print('                     "wgmma.mma_async.sync.aligned.m64n%dk16.f32.%s.%s "' % (n, ptx, ptx))
        # split the register list over lines of 16
        chunks = [",".join("%%%d" % i for i in range(j, min(j + 16, nr))) for j in range(0, nr, 16)]
        print('                     "{"')
        for ci, c in enumerate(chunks):
            print('                     "%s%s"' % (c, "," if ci + 1 < len(chunks) else ""))
        print('                     "}, %%%d, %%%d, p, 1, 1, %%%d, %%%d;\\n}\\n"' % (nr, nr + 1, nr + 3, nr + 4))
        outs = ", ".join('"+f"(d[%d])' % i for i in range(nr))
        # wrap outputs
        items = ['"+f"(d[%d])' % i for i in range(nr)]
        lines = [", ".join(items[j:j + 8]) for j in range(0, nr, 8)]
        print("                     : " + (",\n                       ".join(lines)))
        print('                     : "l"(a), "l"(b), "r"(1), "n"(TA), "n"(TB));')
        print("    }")
        print("};")
