"""`echo-vllm bench`: the two tables speculative decoding is judged by, side by side.

  plan.py      what to run (methods, datasets, batch sizes), checked before any model loads
  offline.py   runs through `LLM()`: a plain engine and each method's engine take turns
  online.py    runs against running `vllm serve` servers through `vllm bench serve` (concurrency N)
  simulate.py  projects measured acceptance onto a GPU roofline profile (labelled a projection)
  report.py    the Markdown report and the raw JSON; `--render` re-draws them from a saved run
  plots.py     the PNG plots, one colour and marker per method in all of them
"""
