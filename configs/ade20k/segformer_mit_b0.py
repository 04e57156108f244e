# ADE20K (150 classes), SegFormer MiT-b0: mmseg's own ADE20K dataset config (reduce_zero_label), for a GPU.
# Data: mmseg's layout under data_root (ADEChallengeData2016): images/{training,validation}/*.jpg,
# annotations/{training,validation}/*.png. Images differ in size; label 0 ("other") becomes the ignore index.
#   alseg ids ade20k/segformer_mit_b0 --data-root data/ade/ADEChallengeData2016 --out pool.txt
_base_ = [
    'mmseg::_base_/datasets/ade20k.py',
    '../_base_/runtime.py',
    '../_base_/schedules/adamw_20k.py',
    '../_base_/models/segformer_mit_b0.py',
]
crop_size = (512, 512)
model = dict(data_preprocessor=dict(size=crop_size), decode_head=dict(num_classes=150))
train_dataloader = dict(batch_size=8, num_workers=4)
