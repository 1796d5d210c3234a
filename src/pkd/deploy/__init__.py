"""Deploy: ONNX export with its parity check, running an export, speed benchmarks, and run
directories as tables (`pkd report`).

Layer 6: imports `pkd.training` and everything below it.
"""
