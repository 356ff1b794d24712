"""Using a trained model at the hospital: prediction on images, clips and videos, and export to ONNX."""
