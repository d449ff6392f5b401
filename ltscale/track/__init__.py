from ltscale.track.tracker import MlflowTracker, NullTracker, Tracker, default_tracking_uri

__all__ = ["MlflowTracker", "NullTracker", "Tracker", "default_tracking_uri"]
