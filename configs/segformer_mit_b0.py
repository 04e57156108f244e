# SegFormer with a MiT-b0 encoder and the all-MLP SegformerHead (logits at 1/4 of the input), for a GPU.
# Data: the alseg custom-folder layout (see _base_/alseg_demo_dataset.py); override `data_root`,
# `metainfo` and `model.decode_head.num_classes` for your data.
# Weights: `pretrained=None`, nothing is downloaded. To start from local ImageNet weights set
#   model.backbone.init_cfg=dict(type='Pretrained', checkpoint='/path/to/mit_b0.pth')
# or whole-model weights with `load_from = '/path/to/segformer_mit-b0.pth'`.
_base_ = ['./_base_/alseg_demo_dataset.py', './_base_/models/segformer_mit_b0.py']

model = dict(decode_head=dict(num_classes={{_base_.num_classes}}))

train_dataloader = dict(batch_size=8, num_workers=4, persistent_workers=True)
val_dataloader = dict(num_workers=2)
test_dataloader = val_dataloader
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys=dict(pos_block=dict(decay_mult=0.0), norm=dict(decay_mult=0.0),
                                        head=dict(lr_mult=10.0))),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=20000, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=20000, val_interval=2000)
