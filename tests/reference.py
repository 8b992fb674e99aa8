"""Independent NumPy references for the tests: a textbook covariance-form Kalman filter that
drops missing rows, and the dense joint-Gaussian log-density of a tiny panel."""

from __future__ import annotations

import numpy as np


def _decay(k, t):
    return (1.0 - np.exp(-k * t)) / k


def np_measurement(theta: dict, ttm):
    k, sx, sy, rho = theta["kappa"], theta["sigma_x"], theta["sigma_y"], theta["rho"]
    mu_star = theta.get("mu_star", theta["mu"])
    lam = theta.get("lambda_x", 0.0)
    ttm = np.asarray(ttm, float)
    b = np.exp(-k * ttm)
    A = (
        mu_star * ttm
        - lam * _decay(k, ttm)
        + 0.5 * (sx**2 * _decay(2 * k, ttm) + sy**2 * ttm + 2 * rho * sx * sy * _decay(k, ttm))
    )
    return b, A


def np_transition(theta: dict, dt):
    k, sx, sy, rho, mu = (theta[n] for n in ("kappa", "sigma_x", "sigma_y", "rho", "mu"))
    F = np.diag([np.exp(-k * dt), 1.0])
    c = np.array([0.0, mu * dt])
    Q = np.array(
        [
            [sx**2 * _decay(2 * k, dt), rho * sx * sy * _decay(k, dt)],
            [rho * sx * sy * _decay(k, dt), sy**2 * dt],
        ]
    )
    return F, c, Q


def np_kalman_filter(theta, log_f, ttm, mask, dt, x0, P0, log_s=None, spot_sd=None):
    """Plain covariance-form filter; missing entries are dropped row by row."""
    T, M = log_f.shape
    sd = np.broadcast_to(np.asarray(theta["meas_sd"], float), (M,))
    dt = np.broadcast_to(np.asarray(dt, float), (T - 1,))
    m, P = np.asarray(x0, float).copy(), np.asarray(P0, float).copy()
    ll_t = np.zeros(T)
    filt_m = np.zeros((T, 2))
    filt_P = np.zeros((T, 2, 2))
    pred_m = np.zeros((T, 2))
    pred_P = np.zeros((T, 2, 2))
    for t in range(T):
        pred_m[t], pred_P[t] = m, P
        obs = np.flatnonzero(mask[t])
        b, A = np_measurement(theta, ttm[t, obs])
        H = np.column_stack([b, np.ones_like(b)])
        y = log_f[t, obs] - A
        Rd = sd[obs] ** 2
        if log_s is not None and np.isfinite(log_s[t]):
            H = np.vstack([H, [1.0, 1.0]])
            y = np.append(y, log_s[t])
            Rd = np.append(Rd, spot_sd**2)
        if len(y):
            S = H @ P @ H.T + np.diag(Rd)
            v = y - H @ m
            Sinv = np.linalg.inv(S)
            K = P @ H.T @ Sinv
            m = m + K @ v
            P = P - K @ S @ K.T
            P = 0.5 * (P + P.T)
            sign, logdet = np.linalg.slogdet(S)
            ll_t[t] = -0.5 * (len(y) * np.log(2 * np.pi) + logdet + v @ Sinv @ v)
        filt_m[t], filt_P[t] = m, P
        if t < T - 1:
            F, c, Q = np_transition(theta, dt[t])
            m = F @ m + c
            P = F @ P @ F.T + Q
    return dict(
        loglik=ll_t.sum(),
        loglik_t=ll_t,
        filtered_means=filt_m,
        filtered_covs=filt_P,
        predicted_means=pred_m,
        predicted_covs=pred_P,
    )


def dense_joint_loglik(theta, log_f, ttm, mask, dt, x0, P0):
    """log N(y_obs | E y, Cov y) with the full joint covariance of all observations (T small)."""
    T, M = log_f.shape
    sd = np.broadcast_to(np.asarray(theta["meas_sd"], float), (M,))
    dt = np.broadcast_to(np.asarray(dt, float), (T - 1,))
    # joint mean/cov of the states x_0..x_{T-1}
    means = [np.asarray(x0, float)]
    covs = {(0, 0): np.asarray(P0, float)}
    Fs = []
    for t in range(1, T):
        F, c, Q = np_transition(theta, dt[t - 1])
        Fs.append(F)
        means.append(F @ means[-1] + c)
        covs[(t, t)] = F @ covs[(t - 1, t - 1)] @ F.T + Q
    # Cov(x_t, x_s) = F_{t-1}...F_s Cov(x_s, x_s) for t > s
    big = np.zeros((2 * T, 2 * T))
    for s in range(T):
        C = covs[(s, s)]
        big[2 * s : 2 * s + 2, 2 * s : 2 * s + 2] = C
        for t in range(s + 1, T):
            C = Fs[t - 1] @ C
            big[2 * t : 2 * t + 2, 2 * s : 2 * s + 2] = C
            big[2 * s : 2 * s + 2, 2 * t : 2 * t + 2] = C.T
    rows, ys, mus, rd = [], [], [], []
    for t in range(T):
        for i in range(M):
            if not mask[t, i]:
                continue
            b, A = np_measurement(theta, ttm[t, i])
            h = np.zeros(2 * T)
            h[2 * t], h[2 * t + 1] = b, 1.0
            rows.append(h)
            ys.append(log_f[t, i])
            mus.append(h @ np.concatenate(means) + A)
            rd.append(sd[i] ** 2)
    Hb = np.array(rows)
    cov = Hb @ big @ Hb.T + np.diag(rd)
    r = np.array(ys) - np.array(mus)
    sign, logdet = np.linalg.slogdet(cov)
    return -0.5 * (len(ys) * np.log(2 * np.pi) + logdet + r @ np.linalg.solve(cov, r))


def np_innovations(theta, log_f, ttm, mask, pred_m, pred_P, log_s=None, spot_sd=None):
    """Innovations y − H m_pred and their variances diag(H P_pred Hᵀ + R); 0 where missing."""
    T, M = log_f.shape
    sd = np.broadcast_to(np.asarray(theta["meas_sd"], float), (M,))
    v = np.zeros((T, M))
    s = np.zeros((T, M))
    for t in range(T):
        for i in range(M):
            if not mask[t, i]:
                continue
            b, A = np_measurement(theta, ttm[t, i])
            h = np.array([b, 1.0])
            v[t, i] = log_f[t, i] - h @ pred_m[t] - A
            s[t, i] = h @ pred_P[t] @ h + sd[i] ** 2
    if log_s is None:
        return v, s
    h = np.ones(2)
    obs = np.isfinite(log_s)
    vs = np.where(obs, np.nan_to_num(log_s) - pred_m @ h, 0.0)
    ss = np.where(obs, np.einsum("i,tij,j->t", h, pred_P, h) + spot_sd**2, 0.0)
    return v, s, vs, ss


def np_rts_smoother(theta, filt, dt):
    """Textbook RTS smoother on the output of :func:`np_kalman_filter`, with explicit inverses.

    Returns dict(smoothed_means [T,2], smoothed_covs [T,2,2], lag_one_covs [T-1,2,2] with
    lag_one_covs[t] = Cov(x_{t+1}, x_t | all data), gains [T-1,2,2]).
    """
    fm, fP = filt["filtered_means"], filt["filtered_covs"]
    pm, pP = filt["predicted_means"], filt["predicted_covs"]
    T = fm.shape[0]
    dt = np.broadcast_to(np.asarray(dt, float), (T - 1,))
    sm, sP = fm.copy(), fP.copy()
    lag = np.zeros((T - 1, 2, 2))
    gains = np.zeros((T - 1, 2, 2))
    for t in range(T - 2, -1, -1):
        F, _, _ = np_transition(theta, dt[t])
        J = fP[t] @ F.T @ np.linalg.inv(pP[t + 1])
        sm[t] = fm[t] + J @ (sm[t + 1] - pm[t + 1])
        sP[t] = fP[t] + J @ (sP[t + 1] - pP[t + 1]) @ J.T
        lag[t] = sP[t + 1] @ J.T
        gains[t] = J
    return dict(smoothed_means=sm, smoothed_covs=sP, lag_one_covs=lag, gains=gains)


def _dense_states(theta, T, dt, x0, P0):
    """Joint prior mean [2T] and covariance [2T, 2T] of the states x_0..x_{T-1}."""
    dt = np.broadcast_to(np.asarray(dt, float), (T - 1,))
    means = [np.asarray(x0, float)]
    diag = [np.asarray(P0, float)]
    Fs = []
    for t in range(1, T):
        F, c, Q = np_transition(theta, dt[t - 1])
        Fs.append(F)
        means.append(F @ means[-1] + c)
        diag.append(F @ diag[-1] @ F.T + Q)
    big = np.zeros((2 * T, 2 * T))
    for s in range(T):
        C = diag[s]
        big[2 * s : 2 * s + 2, 2 * s : 2 * s + 2] = C
        for t in range(s + 1, T):
            C = Fs[t - 1] @ C
            big[2 * t : 2 * t + 2, 2 * s : 2 * s + 2] = C
            big[2 * s : 2 * s + 2, 2 * t : 2 * t + 2] = C.T
    return np.concatenate(means), big


def dense_joint_posterior(theta, log_f, ttm, mask, dt, x0, P0):
    """E[x_t | all y], Cov[x_t | all y] and Cov[x_{t+1}, x_t | all y] by Gaussian conditioning
    of the dense joint distribution of (x_0..x_{T-1}, y_obs) (T small)."""
    T, M = log_f.shape
    sd = np.broadcast_to(np.asarray(theta["meas_sd"], float), (M,))
    mx, Sx = _dense_states(theta, T, dt, x0, P0)
    rows, ys, rd = [], [], []
    for t in range(T):
        for i in range(M):
            if not mask[t, i]:
                continue
            b, A = np_measurement(theta, ttm[t, i])
            h = np.zeros(2 * T)
            h[2 * t], h[2 * t + 1] = b, 1.0
            rows.append(h)
            ys.append(log_f[t, i] - A)
            rd.append(sd[i] ** 2)
    H = np.array(rows)
    C = H @ Sx @ H.T + np.diag(rd)
    G = np.linalg.solve(C, H @ Sx).T  # Sx Hᵀ C⁻¹
    mean = mx + G @ (np.array(ys) - H @ mx)
    cov = Sx - G @ H @ Sx
    cov = 0.5 * (cov + cov.T)
    means = mean.reshape(T, 2)
    covs = np.stack([cov[2 * t : 2 * t + 2, 2 * t : 2 * t + 2] for t in range(T)])
    lag = np.stack([cov[2 * t + 2 : 2 * t + 4, 2 * t : 2 * t + 2] for t in range(T - 1)])
    return dict(smoothed_means=means, smoothed_covs=covs, lag_one_covs=lag)


_PI_50 = "3.14159265358979323846264338327950288419716939937510"


def hp_kalman_filter(theta, log_f, ttm, mask, dt, x0, P0, digits=40):
    """The same filter in ``decimal`` arithmetic with ``digits`` significant digits.

    Observations are processed one scalar at a time (exact for a diagonal R), so nothing is
    inverted and no precision is lost to conditioning: an arbiter for ill-conditioned cases
    where the float64 covariance-form filter above is itself only accurate to ~1e-7.
    Inputs are converted exactly from float64. Returns float64 arrays like np_kalman_filter.
    """
    import decimal

    with decimal.localcontext() as ctx:
        ctx.prec = digits
        return _hp_kalman_filter(decimal.Decimal, theta, log_f, ttm, mask, dt, x0, P0)


def _hp_kalman_filter(Dec, theta, log_f, ttm, mask, dt, x0, P0):
    def D(v):
        return Dec(float(v))  # exact conversion of the float64 value

    T, M = log_f.shape
    k, sx, sy, rho, mu = (D(theta[n]) for n in ("kappa", "sigma_x", "sigma_y", "rho", "mu"))
    mu_star = D(theta.get("mu_star", theta["mu"]))
    lam = D(theta.get("lambda_x", 0.0))
    sd = np.broadcast_to(np.asarray(theta["meas_sd"], float), (M,))
    r = [D(s) ** 2 for s in sd]
    dt = np.broadcast_to(np.asarray(dt, float), (T - 1,))
    one, two, half = D(1), D(2), D(0.5)
    log2pi = (two * Dec(_PI_50)).ln()

    def decay(kk, t):  # (1 - e^{-kk t}) / kk
        return (one - (-kk * t).exp()) / kk

    m = [D(v) for v in x0]
    P = [[D(P0[i][j]) for j in range(2)] for i in range(2)]
    out = {n: [] for n in ("loglik_t", "fm", "fP", "pm", "pP")}
    for t in range(T):
        out["pm"].append([float(v) for v in m])
        out["pP"].append([[float(v) for v in row] for row in P])
        ll = D(0)
        for i in range(M):
            if not mask[t, i]:
                continue
            tau = D(ttm[t, i])
            b = (-k * tau).exp()
            A = (
                mu_star * tau
                - lam * decay(k, tau)
                + half * (sx * sx * decay(two * k, tau) + sy * sy * tau
                          + two * rho * sx * sy * decay(k, tau))
            )  # fmt: skip
            h = (b, one)
            Ph = [P[0][0] * h[0] + P[0][1] * h[1], P[1][0] * h[0] + P[1][1] * h[1]]
            S = h[0] * Ph[0] + h[1] * Ph[1] + r[i]
            v = D(log_f[t, i]) - A - (h[0] * m[0] + h[1] * m[1])
            K = [Ph[0] / S, Ph[1] / S]
            m = [m[0] + K[0] * v, m[1] + K[1] * v]
            P = [[P[a][c] - K[a] * Ph[c] for c in range(2)] for a in range(2)]
            ll -= half * (log2pi + S.ln() + v * v / S)
        out["loglik_t"].append(float(ll))
        out["fm"].append([float(v) for v in m])
        out["fP"].append([[float(v) for v in row] for row in P])
        if t < T - 1:
            d = D(dt[t])
            phi = (-k * d).exp()
            q11 = sx * sx * decay(two * k, d)
            q12 = rho * sx * sy * decay(k, d)
            q22 = sy * sy * d
            m = [phi * m[0], m[1] + mu * d]
            P = [
                [phi * phi * P[0][0] + q11, phi * P[0][1] + q12],
                [phi * P[1][0] + q12, P[1][1] + q22],
            ]
    llt = np.array(out["loglik_t"])
    return dict(
        loglik=float(llt.sum()),
        loglik_t=llt,
        filtered_means=np.array(out["fm"]),
        filtered_covs=np.array(out["fP"]),
        predicted_means=np.array(out["pm"]),
        predicted_covs=np.array(out["pP"]),
    )


def np_tiny_panel(theta, seed, T=6, M=3, x0=(0.1, 3.0)):
    """A small panel simulated in NumPy: random maturities in [0.02, 2.5] and steps in
    [0.005, 0.1], a random mask (~30% missing) with date 0 fully observed, date 2 fully missing
    and date 4 observed in tenor 1 only. Returns (F [T, M], ttm [T, M], mask [T, M], dt [T-1])."""
    rng = np.random.default_rng(seed)
    ttm = rng.uniform(0.02, 2.5, (T, M))
    dt = rng.uniform(0.005, 0.1, T - 1)
    x = np.asarray(x0, float).copy()
    sd = np.broadcast_to(np.asarray(theta["meas_sd"], float), (M,))
    log_f = np.zeros((T, M))
    for t in range(T):
        if t:
            F, c, Q = np_transition(theta, dt[t - 1])
            x = F @ x + c + np.linalg.cholesky(Q) @ rng.standard_normal(2)
        b, A = np_measurement(theta, ttm[t])
        log_f[t] = b * x[0] + x[1] + A + sd * rng.standard_normal(M)
    mask = rng.random((T, M)) > 0.3
    mask[0] = True
    mask[2] = False
    mask[4] = False
    mask[4, 1] = True
    return np.exp(log_f), ttm, mask, dt


def dense_expected_complete_loglik(theta_new, theta_old, log_f, ttm, mask, dt, x0, P0):
    """Q(Θ_new | Θ_old) = E[ln p(x, y | Θ_new) | y, Θ_old] − E[ln p(x_0)] by dense algebra.

    The posterior of all states x_0..x_{T-1} under Θ_old comes from conditioning the dense
    joint Gaussian; ln p(x | Θ_new) is the dense Gaussian density of the whole state path
    (a product of the prior and the transitions), from which the (Θ-free) prior term is
    removed; the measurement part uses the full posterior covariance. T small.
    """
    T, M = log_f.shape
    # posterior of the stacked states under theta_old
    sd_o = np.broadcast_to(np.asarray(theta_old["meas_sd"], float), (M,))
    mx, Sx = _dense_states(theta_old, T, dt, x0, P0)

    def rows_for(theta):
        H, ys, rv = [], [], []
        sd = np.broadcast_to(np.asarray(theta["meas_sd"], float), (M,))
        for t in range(T):
            for i in range(M):
                if not mask[t, i]:
                    continue
                b, A = np_measurement(theta, ttm[t, i])
                h = np.zeros(2 * T)
                h[2 * t], h[2 * t + 1] = b, 1.0
                H.append(h)
                ys.append(log_f[t, i] - A)
                rv.append(sd[i] ** 2)
        return np.array(H), np.array(ys), np.array(rv)

    H, ys, _ = rows_for(theta_old)
    C = H @ Sx @ H.T + np.diag(np.concatenate([sd_o[mask[t]] ** 2 for t in range(T)]))
    G = np.linalg.solve(C, H @ Sx).T
    mean = mx + G @ (ys - H @ mx)
    cov = Sx - G @ H @ Sx
    cov = 0.5 * (cov + cov.T)

    def expected_log_normal(m_p, S_p, m, S):
        n = m_p.shape[0]
        d = m - m_p
        _, logdet = np.linalg.slogdet(S_p)
        return -0.5 * (
            n * np.log(2 * np.pi)
            + logdet
            + np.trace(np.linalg.solve(S_p, S))
            + d @ np.linalg.solve(S_p, d)
        )

    mxn, Sxn = _dense_states(theta_new, T, dt, x0, P0)
    states = expected_log_normal(mxn, Sxn, mean, cov)
    prior = expected_log_normal(np.asarray(x0, float), np.asarray(P0, float), mean[:2], cov[:2, :2])
    Hn, ysn, rvn = rows_for(theta_new)
    r = ysn - Hn @ mean
    meas = -0.5 * np.sum(
        np.log(2 * np.pi * rvn) + (r * r + np.einsum("ij,jk,ik->i", Hn, cov, Hn)) / rvn
    )
    return states - prior + meas
