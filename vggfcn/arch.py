"""The VGG family as data: one table of layer plans, from which names and shapes are derived.

Like timm's `cfgs`, the plan lists convolutions per block; pools close every block. Widths are
not trusted from the table: a checkpoint's own tensor shapes decide them, so narrower
VGG16-topology models (our fast test fixtures) are first-class citizens.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Convolutions per block for each member of the family (Simonyan & Zisserman, table 1, A/B/D/E).
PLANS: dict[str, tuple[int, ...]] = {
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}

#: Total stride of the trunk (five 2x2 pools) and the spatial size of pool5 at 224x224.
STRIDE = 32
POOL5_SIZE = 7
#: The input size of the stock VGG classifiers (and the default when a file does not say).
MIN_INPUT = STRIDE * POOL5_SIZE  # 224


def conv_names(plan: tuple[int, ...]) -> list[str]:
    """Keras-style trunk convolution names in model order: block1_conv1, block1_conv2, ..."""
    return [f"block{b}_conv{i}" for b, n in enumerate(plan, start=1) for i in range(1, n + 1)]


def name_of(plan: tuple[int, ...]) -> str | None:
    """The family member with this plan ("vgg16"), or None."""
    return next((name for name, p in PLANS.items() if p == plan), None)


def plan_with(convs: int) -> tuple[int, ...] | None:
    """The plan of the member with this many convolutions (each member has its own count)."""
    return next((p for p in PLANS.values() if sum(p) == convs), None)


def feature_indices(plan: tuple[int, ...], norms: bool = False) -> tuple[list[int], list[int]]:
    """Where torchvision's `features` Sequential puts each convolution and each block's
    max-pool: every conv is followed by a ReLU (a BatchNorm2d before it in `_bn` models), every
    block by a MaxPool. VGG16: convs 0, 2, 5, 7, 10, ..., pools 4, 9, 16, 23, 30."""
    convs, pools, i = [], [], 0
    for count in plan:
        for _ in range(count):
            convs.append(i)
            i += 3 if norms else 2
        pools.append(i)
        i += 1
    return convs, pools


def plan_of_features(indices: list[int], norms: bool = False) -> tuple[int, ...] | None:
    """The plan whose torchvision `features` convolutions sit at `indices`; failing that, the
    plan with as many convolutions (a Sequential numbered its own way still says which VGG)."""
    for plan in PLANS.values():
        if feature_indices(plan, norms)[0] == indices:
            return plan
    return plan_with(len(indices))


def plan_holding(deepest: list[int]) -> tuple[int, ...] | None:
    """The smallest plan with at least `deepest[b]` convolutions in each block b (a file that
    numbers its convs per block, missing some, still says which VGG it was meant to be)."""
    plans = [p for p in PLANS.values() if all(n >= d for n, d in zip(p, deepest, strict=True))]
    return min(plans, key=sum) if plans else None


def family_counts() -> str:
    """ "vgg11: 8, vgg13: 10, ...": how many convolutions each member has, for messages."""
    return ", ".join(f"{n}: {sum(p)}" for n, p in PLANS.items())


@dataclass(frozen=True)
class Arch:
    """A stock VGG classifier's shape (trunk widths, fc6/fc7 units, classes): what the
    synthetic weights and the test fixtures are generated from.

    Attributes:
        name: "vgg16" etc.
        plan: convolutions per block.
        conv_widths: output channels of each trunk convolution, in model order.
        head_widths: output units of fc6, fc7, fc8 (the last one is the class count).
    """

    name: str
    plan: tuple[int, ...]
    conv_widths: tuple[int, ...]
    head_widths: tuple[int, int, int]
    in_channels: int = 3

    @classmethod
    def from_blocks(
        cls, name: str, block_widths: tuple[int, ...], fc: tuple[int, int], classes: int
    ) -> Arch:
        """An architecture from one width per block, as VGG papers and our fixtures state them."""
        plan = PLANS[name]
        widths = tuple(w for n, w in zip(plan, block_widths, strict=True) for _ in range(n))
        return cls(name, plan, widths, (fc[0], fc[1], classes))

    @property
    def conv_names(self) -> list[str]:
        return conv_names(self.plan)

    @property
    def classes(self) -> int:
        return self.head_widths[2]

    @property
    def pool5_channels(self) -> int:
        return self.conv_widths[-1]

    def conv_shapes(self) -> list[tuple[int, int, int, int]]:
        """HWIO kernel shapes of the trunk convolutions."""
        cins = (self.in_channels, *self.conv_widths[:-1])
        return [(3, 3, ci, co) for ci, co in zip(cins, self.conv_widths, strict=True)]

    def dense_shapes(self) -> list[tuple[int, int]]:
        """(in, out) kernel shapes of the classifier's fc6, fc7, fc8 (fc6 reads 7x7 pool5)."""
        f6, f7, k = self.head_widths
        return [(POOL5_SIZE * POOL5_SIZE * self.pool5_channels, f6), (f6, f7), (f7, k)]

    def parameter_count(self) -> int:
        convs = sum(h * w * i * o + o for h, w, i, o in self.conv_shapes())
        return convs + sum(i * o + o for i, o in self.dense_shapes())
