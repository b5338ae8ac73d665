"""Cinder's own fake logging driver, with the image operations made no-ops.

Volumes go through the real cinder-api, scheduler and volume service (states, quotas,
attachments); only the storage backend is absent.
"""

from cinder.tests.fake_driver import FakeLoggingVolumeDriver


class FakeVolumeDriver(FakeLoggingVolumeDriver):
    def copy_image_to_volume(self, context, volume, image_service, image_id, disable_sparse=False):
        pass

    def copy_volume_to_image(self, context, volume, image_service, image_meta):
        pass

    def clone_image(self, context, volume, image_location, image_meta, image_service):
        return None, False
