# Pascal VOC 2012 + SBD augmented masks (21 classes, 10,582 train ids), DeepLabV3-R18: mmseg's own voc12_aug config.
# The train split is mmseg's ConcatDataset of train.txt (SegmentationClass) and aug.txt (SegmentationClassAug);
# an id present in both is taken once, from the first (train.txt) dataset.
_base_ = [
    'mmseg::_base_/datasets/pascal_voc12_aug.py',
    '../_base_/runtime.py',
    '../_base_/schedules/sgd_20k.py',
    '../_base_/models/deeplabv3_r18_d8.py',
]
crop_size = (512, 512)
model = dict(data_preprocessor=dict(size=crop_size), decode_head=dict(num_classes=21),
             auxiliary_head=dict(num_classes=21))
train_dataloader = dict(batch_size=8, num_workers=4)
