"""The face attribute model, below the data and evaluate stages that use it.

Modules: `schema` (the attribute names, age groups and the CelebA/UTKFace label parsers), `backbone` (the
ImageNet MobileNetV2 and its feature maps), `classifier` (the network and heads that predict attributes,
fitting heads on frozen features, scores) and `finetune` (training backbone and heads together on
augmented faces: the shipped classifier's recipe, `scripts/train_attribute_classifier.py`). Nothing here
reads datasets or imports another facesmith stage; the stages that train and apply a classifier are
`evaluate/attributes.py`.
"""
