# Pascal VOC 2012 (21 classes), DeepLabV3 with a dilated ResNet-18: mmseg's own VOC dataset config, for a GPU.
# Data: mmseg's layout under data_root (VOCdevkit/VOC2012): JPEGImages/*.jpg, SegmentationClass/*.png,
# ImageSets/Segmentation/{train,val}.txt. Images differ in size; pool files store each at its own size.
#   alseg ids voc/deeplabv3_r18_d8 --data-root data/VOCdevkit/VOC2012 --out pool.txt
# For the 10,582-image augmented set use voc/deeplabv3_r18_d8_aug (SegmentationClassAug, aug.txt).
_base_ = [
    'mmseg::_base_/datasets/pascal_voc12.py',
    '../_base_/runtime.py',
    '../_base_/schedules/sgd_20k.py',
    '../_base_/models/deeplabv3_r18_d8.py',
]
crop_size = (512, 512)
model = dict(data_preprocessor=dict(size=crop_size), decode_head=dict(num_classes=21),
             auxiliary_head=dict(num_classes=21))
train_dataloader = dict(batch_size=8, num_workers=4)
