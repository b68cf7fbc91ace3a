"""The face attribute model, below the data and evaluate stages that use it.

Modules: `schema` (the attribute names, age groups and the CelebA/UTKFace label parsers), `backbone` (the
frozen ImageNet MobileNetV2 and its feature maps) and `classifier` (the heads that predict attributes,
their fitting and scores). Nothing here reads datasets or imports another facesmith stage; the stages that
train and apply a classifier are `evaluate/attributes.py`.
"""
