"""Pictures that explain what a descriptor learned: t-SNE, Grad-CAM, movies, failures.

- :mod:`~softloc.explain.colors`: the 2-D colour code of positions and its key;
- :mod:`~softloc.explain.queries`: the queries of a map and what the map retrieves for them;
- :mod:`~softloc.explain.tsne`: t-SNE of query descriptors coloured by position;
- :mod:`~softloc.explain.gradcam`: Grad-CAM of the descriptor distance between a query and its
  top-1 reference (pytorch-grad-cam with a custom target);
- :mod:`~softloc.explain.movie`: Grad-CAM panels over a whole query drive (mp4 or GIF);
- :mod:`~softloc.explain.failures`: the worst failures: query, retrieved, true nearest;
- :mod:`~softloc.explain.output`: where the pictures may be written (checked first).
"""
