"""Loading: every layer an archive's plans name is extracted and verified in a staging directory (those
the store has are neither extracted nor read), then every new layer, image and tag is published in one
transaction."""

from __future__ import annotations

from .._store import Transaction
from ..errors import InvalidArchive, LayerNotFound
from ..images import Image, Images
from ..layers import Layers, StagedLayer, layer_record
from .members import Members
from .plans import ImagePlan, LayerPlan


class Loader:
    def __init__(self, images: Images, layers: Layers, privilege: str, arc: Members, tx: Transaction) -> None:
        self.images = images
        self.layers = layers
        self.privilege = privilege
        self.arc = arc
        self.tx = tx
        self.staged: dict[str, StagedLayer] = {}  # chain id -> the layer staged by this load

    def _lower(self, chain: str | None) -> list[str]:
        """The content directories of the layer ``chain`` (staged by this load, or in the store) and
        those below it, top first."""
        if chain is None:
            return []
        staged = self.staged.get(chain)
        if staged is not None:
            return staged.stack_paths
        layer = self.layers.find(chain)
        if layer is None:
            raise LayerNotFound(f"layer {chain} was removed from the store while loading")
        return layer.stack_paths()

    def layer(self, lp: LayerPlan, image_what: str) -> None:
        """Extract and verify one layer into a staging directory, unless the store or this load has it."""
        if lp.chain_id in self.staged or self.layers.find(lp.chain_id) is not None:
            self.arc.skip(lp.member)  # progress counts it as done
            return
        what = f"layer {lp.member!r}"
        lower = self._lower(lp.parent)
        staged = self.tx.stage_layer()
        diff_id, size, tar_size, blob_digest = self.arc.import_layer(lp.member, staged.content, staged.tarsplit, lower, self.privilege)
        if lp.blob_digest is not None and blob_digest != lp.blob_digest:
            raise InvalidArchive(f"{what}: digest mismatch: the blob hashes to {blob_digest}, the manifest says {lp.blob_digest}")
        if diff_id != lp.diff_id:
            raise InvalidArchive(
                f"{what}: diff_id mismatch: the layer's tar hashes to {diff_id}, the config of {image_what} says {lp.diff_id}"
            )
        rec = layer_record(diff_id, lp.parent, size=size, tar_size=tar_size)
        assert rec.chain_id == lp.chain_id
        self.staged[lp.chain_id] = StagedLayer(staged, rec, lower)

    def publish(self, plans: list[ImagePlan]) -> list[Image]:
        """Make every staged layer, every new image and every tag visible in one transaction."""
        ids = {p.image_id for p in plans}
        out: list[Image] = []
        with self.tx.publishing() as pub:
            for staged in self.staged.values():  # bottom first: parents were staged first
                pub.add_layer(staged.staged, staged.record)
            for plan in plans:
                parent = plan.parent if plan.parent and (plan.parent in ids or pub.records.image(plan.parent)) else None
                img = self.images.publish(self.tx, pub, plan.config, parent=parent, tag=None)
                for tag in plan.tags:
                    pub.set_tag(tag, img.id)
                if img not in out:
                    out.append(img)
        return out
