"""
The CPU speed layer: how a loaded model decodes fast on this machine. sample.py and bench.py call
its entry point, cpu.speed.prepare_for_cpu, once a model is loaded; load.py quantizes through
cpu.quantize as it reads a file. The core (model.py, generate.py, draws.py) never imports it.
- speed.py: the entry point (prepare_for_cpu, compiles_by_default);
- layout.py: float32 / bfloat16 weight layouts (oneDNN's packed blocks, row- or column-major);
- int8.py, int4.py: weight-only formats and their kernels; quantize.py: the formats' one door;
- quantized_cache.py: quantized weights cached on disk;
- compiled.py: the decode step and sampling rule compiled ahead of time by AOTInductor;
- cache.py: the cache folder, the machine key and the timings file they share.
Every choice here keeps the text of a seed: only layouts and kernels that give the same bits are
ever candidates, so timings change the speed, never the output.
"""
