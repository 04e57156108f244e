# ADE20K (150 classes), SegFormer MiT-b0: mmseg's own ADE20K dataset config (reduce_zero_label), for a GPU.
# Data: mmseg's layout under data_root (ADEChallengeData2016): images/{training,validation}/*.jpg,
# annotations/{training,validation}/*.png. Images differ in size; label 0 ("other") becomes the ignore index.
#   alseg ids ade20k/segformer_mit_b0 --data-root data/ade/ADEChallengeData2016 --out pool.txt
_base_ = [
    'mmseg::_base_/datasets/ade20k.py',
    '../_base_/gpu_schedule_20k.py',
    '../_base_/models/segformer_mit_b0.py',
]
crop_size = (512, 512)
model = dict(data_preprocessor=dict(size=crop_size), decode_head=dict(num_classes=150))
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
