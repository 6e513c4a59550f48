"""Parameter counts docs/models.md fixes, shared by the tests that check them."""

DEIT_COUNTS = {  # docs/attention.md: (regular, every two-projection variant)
    "deit_tiny_patch16_224": (5_717_416, 5_272_744),
    "deit_small_patch16_224": (22_050_664, 20_276_584),
    "deit_base_patch16_224": (86_567_656, 79_480_552),
    "deit_tiny_distilled_patch16_224": (5_910_800, 5_466_128),
    "deit_small_distilled_patch16_224": (22_436_432, 20_662_352),
    "deit_base_distilled_patch16_224": (87_338_192, 80_251_088),
}
