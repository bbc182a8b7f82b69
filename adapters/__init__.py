"""Framework adapters (installed as qa.adapters): PyTorch, Keras 3 and ONNX behind one interface."""
