"""How good subnets are: BatchNorm calibration (`calibration`), accuracy of subnets and of a dynamic model
(`accuracy`), held-out scoring for a search (`heldout`), and the report a run writes (`report`: eval.json; `plots`).
"""
