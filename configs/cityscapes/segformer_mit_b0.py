# Cityscapes (19 classes), SegFormer MiT-b0: mmseg's own Cityscapes dataset config, for a GPU.
# Data: mmseg's Cityscapes layout (see cityscapes/deeplabv3_r18_d8.py). Logits at 1/4 of the input.
# No weights are downloaded: set model.backbone.init_cfg=dict(type='Pretrained', checkpoint='/path/mit_b0.pth').
_base_ = [
    'mmseg::_base_/datasets/cityscapes.py',
    '../_base_/gpu_schedule_20k.py',
    '../_base_/models/segformer_mit_b0.py',
]
crop_size = (512, 1024)
model = dict(data_preprocessor=dict(size=crop_size), decode_head=dict(num_classes=19))
train_dataloader = dict(batch_size=8, num_workers=4)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys=dict(pos_block=dict(decay_mult=0.0), norm=dict(decay_mult=0.0),
                                        head=dict(lr_mult=10.0))),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=20000, by_epoch=False),
]
