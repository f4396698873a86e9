"""The deploy side: extraction of physically sliced models (`extraction`), the one export door (`export`), ONNX
(`onnx`), the onnxruntime runner (`runtime`: numpy only, no torch), cards (`card`), model folders (`folder`) with
their model cards (`model_card`), latency measurement (`latency`) and the latency table (`latency_table`).

Nothing is imported here, so `dslim.deploy.runtime` loads without torch.
"""
