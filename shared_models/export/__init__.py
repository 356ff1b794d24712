"""Exporting a trained model for bedside devices: ONNX (fp32) and static int8 quantisation."""
