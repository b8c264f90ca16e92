"""The annotate pipeline on Ray Data: listing INPUT, reading and decoding images, the pose actors, the job."""
