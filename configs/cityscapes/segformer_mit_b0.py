# Cityscapes (19 classes), SegFormer MiT-b0: mmseg's own Cityscapes dataset config, for a GPU.
# Data: mmseg's Cityscapes layout (see cityscapes/deeplabv3_r18_d8.py). Logits at 1/4 of the input.
# No weights are downloaded: set model.backbone.init_cfg=dict(type='Pretrained', checkpoint='/path/mit_b0.pth').
_base_ = [
    'mmseg::_base_/datasets/cityscapes.py',
    '../_base_/runtime.py',
    '../_base_/schedules/adamw_20k.py',
    '../_base_/models/segformer_mit_b0.py',
]
crop_size = (512, 1024)
model = dict(data_preprocessor=dict(size=crop_size), decode_head=dict(num_classes=19))
train_dataloader = dict(batch_size=8, num_workers=4)
