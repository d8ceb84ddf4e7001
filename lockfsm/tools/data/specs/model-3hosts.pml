/* GENERATED from specs/*.toml by `lockfsm spec model`: 3 hosts. Do not edit. */
/* Lease loss and signals (the lost, terminate and grace_over events): left out beyond 2 hosts. */
#define N 3

/* domain manager states (daemon side) */
#define D_idle 0
#define D_started 1
#define D_stopped 2
#define D_freed 3
#define D_migrating_out 4
#define D_done 5
#define D_migrating_in 6
#define D_cancelled 7
#define D_failed 8

/* supervisor states; S_gone: no supervisor process */
#define S_starting 0
#define S_holding 1
#define S_running 2
#define S_stopping 3
#define S_refused 4
#define S_exited 5
#define S_migrating_out 6
#define S_handing_off 7
#define S_handed_off 8
#define S_reserved 9
#define S_incoming 10
#define S_cancelling 11
#define S_stopping_incoming 12
#define S_cancelled 13
#define S_paused 14
#define S_unprotected 15
#define S_fencing 16
#define S_lost 17
#define S_gone 18

/* how a manager was made, and how its supervisor was launched */
#define M_START 0
#define M_ATTACH 1
#define M_MIGRATE 2

byte dm[N + 1];      /* each host's manager of the guest */
byte mode[N + 1];
byte sup[N + 1];      /* each host's supervisor of the guest */
byte supmode[N + 1];
bool guest[N + 1];   /* the guest process exists on host h */
byte lease = 0;      /* who holds the guest's exclusive lease (0: nobody) */
byte gate = 0;       /* who reserved it for an incoming migration */
byte cookie = 0;     /* the host that last prepared a migration */

inline release(h) {
    if :: lease == h -> lease = 0 :: else -> skip fi;
    if :: gate == h -> gate = 0 :: else -> skip fi
}

#define executing(h) (guest[h] && (sup[h] == S_running || sup[h] == S_stopping || sup[h] == S_migrating_out || sup[h] == S_unprotected))

proctype host(byte h) {
    do
    :: atomic { dm[h] == D_idle ->
         dm[h] = D_idle;
         printf("STEP host %d: domain idle --set_parameter--> idle\n", h) }
    :: atomic { dm[h] == D_idle && (true) ->
         dm[h] = D_idle;
         printf("STEP host %d: domain idle --register_resource--> idle\n", h) }
    :: atomic { dm[h] == D_idle && (mode[h] == M_START) && (true) && (true) ->
         dm[h] = D_idle;
         printf("STEP host %d: domain idle --supervisor_args--> idle\n", h) }
    :: atomic { dm[h] == D_idle && (mode[h] == M_START) && (true) && sup[h] == S_running && supmode[h] == mode[h] ->
         dm[h] = D_started; mode[h] = M_START;
         printf("STEP host %d: domain idle --get_child--> started\n", h) }
    :: atomic { dm[h] == D_idle && (mode[h] == M_ATTACH) && (true) && (sup[h] == S_running) && ((sup[h] == S_running && (true)) || (sup[h] == S_stopping && (true)) || (sup[h] == S_migrating_out && (true)) || (sup[h] == S_handing_off && (true)) || (sup[h] == S_incoming && (true)) || (sup[h] == S_cancelling && (true)) || (sup[h] == S_stopping_incoming && (true)) || (sup[h] == S_paused && (true)) || (sup[h] == S_unprotected && (true)) || (sup[h] == S_fencing && (true))) ->
         if :: sup[h] == S_running && (true) -> skip; sup[h] = S_running :: sup[h] == S_stopping && (true) -> skip; sup[h] = S_stopping :: sup[h] == S_migrating_out && (true) -> skip; sup[h] = S_migrating_out :: sup[h] == S_handing_off && (true) -> skip; sup[h] = S_handing_off :: sup[h] == S_incoming && (true) -> skip; sup[h] = S_incoming :: sup[h] == S_cancelling && (true) -> skip; sup[h] = S_cancelling :: sup[h] == S_stopping_incoming && (true) -> skip; sup[h] = S_stopping_incoming :: sup[h] == S_paused && (true) -> skip; sup[h] = S_paused :: sup[h] == S_unprotected && (true) -> skip; sup[h] = S_unprotected :: sup[h] == S_fencing && (true) -> skip; sup[h] = S_fencing :: else -> assert(false) fi; dm[h] = D_started; mode[h] = M_START;
         printf("STEP host %d: domain idle --get_child--> started\n", h) }
    :: atomic { dm[h] == D_started ->
         dm[h] = D_started; mode[h] = M_START;
         printf("STEP host %d: domain started --get_child--> started\n", h) }
    :: atomic { dm[h] == D_started && (true) && ((sup[h] == S_running && (true) && (true))) ->
         if :: sup[h] == S_running && (true) && (true) -> skip; sup[h] = S_running :: else -> assert(false) fi; dm[h] = D_started; mode[h] = M_START;
         printf("STEP host %d: domain started --acquire_resource--> started\n", h) }
    :: atomic { dm[h] == D_started && (true) && ((sup[h] == S_running && (true) && (true))) ->
         if :: sup[h] == S_running && (true) && (true) -> skip; sup[h] = S_running :: else -> assert(false) fi; dm[h] = D_started; mode[h] = M_START;
         printf("STEP host %d: domain started --release_resource--> started\n", h) }
    :: atomic { dm[h] == D_started && (sup[h] == S_gone || (sup[h] == S_refused || sup[h] == S_exited || sup[h] == S_handed_off || sup[h] == S_cancelled || sup[h] == S_lost) || (sup[h] == S_running && (true) && (true)) || (sup[h] == S_stopping && (true)) || (sup[h] == S_migrating_out && (true) && (true)) || (sup[h] == S_incoming && (true) && (true)) || (sup[h] == S_stopping_incoming && (true)) || (sup[h] == S_paused && (true) && (true)) || (sup[h] == S_unprotected && (true) && (true)) || (sup[h] == S_fencing && (true))) ->
         if :: (sup[h] == S_running && (true) && (true)) || (sup[h] == S_stopping && (true)) || (sup[h] == S_migrating_out && (true) && (true)) || (sup[h] == S_incoming && (true) && (true)) || (sup[h] == S_stopping_incoming && (true)) || (sup[h] == S_paused && (true) && (true)) || (sup[h] == S_unprotected && (true) && (true)) || (sup[h] == S_fencing && (true)) -> if :: sup[h] == S_running && (true) && (true) -> skip; sup[h] = S_stopping :: sup[h] == S_stopping && (true) -> sup[h] = S_stopping :: sup[h] == S_migrating_out && (true) && (true) -> skip; sup[h] = S_stopping :: sup[h] == S_incoming && (true) && (true) -> skip; sup[h] = S_stopping_incoming :: sup[h] == S_stopping_incoming && (true) -> sup[h] = S_stopping_incoming :: sup[h] == S_paused && (true) && (true) -> guest[h] = false; sup[h] = S_fencing :: sup[h] == S_unprotected && (true) && (true) -> guest[h] = false; sup[h] = S_fencing :: sup[h] == S_fencing && (true) -> sup[h] = S_fencing :: else -> assert(false) fi; guest[h] = false; if :: sup[h] == S_running && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_stopping && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_handing_off && (true) -> release(h); sup[h] = S_handed_off :: sup[h] == S_migrating_out && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_cancelling && (true) -> release(h); sup[h] = S_cancelled :: sup[h] == S_incoming && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_stopping_incoming && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_paused && (true) -> release(h); sup[h] = S_lost :: sup[h] == S_unprotected && (true) -> release(h); sup[h] = S_lost :: sup[h] == S_fencing && (true) -> release(h); sup[h] = S_lost :: else -> assert(false) fi :: else -> skip fi; dm[h] = D_stopped; mode[h] = M_START;
         printf("STEP host %d: domain started --shutdown--> stopped\n", h) }
    :: atomic { dm[h] == D_idle ->
         dm[h] = D_freed; mode[h] = M_START;
         printf("STEP host %d: domain idle --free--> freed\n", h) }
    :: atomic { dm[h] == D_started ->
         dm[h] = D_freed; mode[h] = M_START;
         printf("STEP host %d: domain started --free--> freed\n", h) }
    :: atomic { dm[h] == D_stopped ->
         dm[h] = D_freed; mode[h] = M_START;
         printf("STEP host %d: domain stopped --free--> freed\n", h) }
    :: atomic { dm[h] == D_started && ((sup[h] == S_running && (true) && (true))) ->
         if :: sup[h] == S_running && (true) && (true) -> skip; sup[h] = S_migrating_out :: else -> assert(false) fi; cookie = h; dm[h] = D_migrating_out; mode[h] = M_START;
         printf("STEP host %d: domain started --prepare_migrate--> migrating_out\n", h) }
    :: atomic { dm[h] == D_migrating_out && (true) && ((sup[h] == S_migrating_out && (true) && (true))) ->
         if :: sup[h] == S_migrating_out && (true) && (true) -> skip; sup[h] = S_running :: else -> assert(false) fi; dm[h] = D_started; mode[h] = M_START;
         printf("STEP host %d: domain migrating_out --complete_migrate_in--> started\n", h) }
    :: atomic { dm[h] == D_migrating_out && (true) && ((sup[h] == S_migrating_out && (true) && (true))) ->
         if :: sup[h] == S_migrating_out && (true) && (true) -> guest[h] = false; sup[h] = S_handing_off :: else -> assert(false) fi; if :: sup[h] == S_running && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_stopping && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_handing_off && (true) -> release(h); sup[h] = S_handed_off :: sup[h] == S_migrating_out && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_cancelling && (true) -> release(h); sup[h] = S_cancelled :: sup[h] == S_incoming && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_stopping_incoming && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_paused && (true) -> release(h); sup[h] = S_lost :: sup[h] == S_unprotected && (true) -> release(h); sup[h] = S_lost :: sup[h] == S_fencing && (true) -> release(h); sup[h] = S_lost :: else -> assert(false) fi; dm[h] = D_done; mode[h] = M_START;
         printf("STEP host %d: domain migrating_out --complete_migrate_in--> done\n", h) }
    :: atomic { dm[h] == D_migrating_out && (sup[h] == S_gone || (sup[h] == S_refused || sup[h] == S_exited || sup[h] == S_handed_off || sup[h] == S_cancelled || sup[h] == S_lost) || (sup[h] == S_running && (true) && (true)) || (sup[h] == S_stopping && (true)) || (sup[h] == S_migrating_out && (true) && (true)) || (sup[h] == S_incoming && (true) && (true)) || (sup[h] == S_stopping_incoming && (true)) || (sup[h] == S_paused && (true) && (true)) || (sup[h] == S_unprotected && (true) && (true)) || (sup[h] == S_fencing && (true))) ->
         if :: (sup[h] == S_running && (true) && (true)) || (sup[h] == S_stopping && (true)) || (sup[h] == S_migrating_out && (true) && (true)) || (sup[h] == S_incoming && (true) && (true)) || (sup[h] == S_stopping_incoming && (true)) || (sup[h] == S_paused && (true) && (true)) || (sup[h] == S_unprotected && (true) && (true)) || (sup[h] == S_fencing && (true)) -> if :: sup[h] == S_running && (true) && (true) -> skip; sup[h] = S_stopping :: sup[h] == S_stopping && (true) -> sup[h] = S_stopping :: sup[h] == S_migrating_out && (true) && (true) -> skip; sup[h] = S_stopping :: sup[h] == S_incoming && (true) && (true) -> skip; sup[h] = S_stopping_incoming :: sup[h] == S_stopping_incoming && (true) -> sup[h] = S_stopping_incoming :: sup[h] == S_paused && (true) && (true) -> guest[h] = false; sup[h] = S_fencing :: sup[h] == S_unprotected && (true) && (true) -> guest[h] = false; sup[h] = S_fencing :: sup[h] == S_fencing && (true) -> sup[h] = S_fencing :: else -> assert(false) fi; guest[h] = false; if :: sup[h] == S_running && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_stopping && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_handing_off && (true) -> release(h); sup[h] = S_handed_off :: sup[h] == S_migrating_out && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_cancelling && (true) -> release(h); sup[h] = S_cancelled :: sup[h] == S_incoming && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_stopping_incoming && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_paused && (true) -> release(h); sup[h] = S_lost :: sup[h] == S_unprotected && (true) -> release(h); sup[h] = S_lost :: sup[h] == S_fencing && (true) -> release(h); sup[h] = S_lost :: else -> assert(false) fi :: else -> skip fi; dm[h] = D_stopped; mode[h] = M_START;
         printf("STEP host %d: domain migrating_out --shutdown--> stopped\n", h) }
    :: atomic { dm[h] == D_done && (sup[h] == S_gone || (sup[h] == S_refused || sup[h] == S_exited || sup[h] == S_handed_off || sup[h] == S_cancelled || sup[h] == S_lost) || (sup[h] == S_running && (true) && (true)) || (sup[h] == S_stopping && (true)) || (sup[h] == S_migrating_out && (true) && (true)) || (sup[h] == S_incoming && (true) && (true)) || (sup[h] == S_stopping_incoming && (true)) || (sup[h] == S_paused && (true) && (true)) || (sup[h] == S_unprotected && (true) && (true)) || (sup[h] == S_fencing && (true))) ->
         if :: (sup[h] == S_running && (true) && (true)) || (sup[h] == S_stopping && (true)) || (sup[h] == S_migrating_out && (true) && (true)) || (sup[h] == S_incoming && (true) && (true)) || (sup[h] == S_stopping_incoming && (true)) || (sup[h] == S_paused && (true) && (true)) || (sup[h] == S_unprotected && (true) && (true)) || (sup[h] == S_fencing && (true)) -> if :: sup[h] == S_running && (true) && (true) -> skip; sup[h] = S_stopping :: sup[h] == S_stopping && (true) -> sup[h] = S_stopping :: sup[h] == S_migrating_out && (true) && (true) -> skip; sup[h] = S_stopping :: sup[h] == S_incoming && (true) && (true) -> skip; sup[h] = S_stopping_incoming :: sup[h] == S_stopping_incoming && (true) -> sup[h] = S_stopping_incoming :: sup[h] == S_paused && (true) && (true) -> guest[h] = false; sup[h] = S_fencing :: sup[h] == S_unprotected && (true) && (true) -> guest[h] = false; sup[h] = S_fencing :: sup[h] == S_fencing && (true) -> sup[h] = S_fencing :: else -> assert(false) fi; guest[h] = false; if :: sup[h] == S_running && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_stopping && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_handing_off && (true) -> release(h); sup[h] = S_handed_off :: sup[h] == S_migrating_out && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_cancelling && (true) -> release(h); sup[h] = S_cancelled :: sup[h] == S_incoming && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_stopping_incoming && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_paused && (true) -> release(h); sup[h] = S_lost :: sup[h] == S_unprotected && (true) -> release(h); sup[h] = S_lost :: sup[h] == S_fencing && (true) -> release(h); sup[h] = S_lost :: else -> assert(false) fi :: else -> skip fi; dm[h] = D_stopped; mode[h] = M_START;
         printf("STEP host %d: domain done --shutdown--> stopped\n", h) }
    :: atomic { dm[h] == D_migrating_out ->
         dm[h] = D_freed; mode[h] = M_START;
         printf("STEP host %d: domain migrating_out --free--> freed\n", h) }
    :: atomic { dm[h] == D_done ->
         dm[h] = D_freed; mode[h] = M_START;
         printf("STEP host %d: domain done --free--> freed\n", h) }
    :: atomic { dm[h] == D_idle && (mode[h] == M_ATTACH) && (true) && (sup[h] == S_migrating_out) && ((sup[h] == S_running && (true)) || (sup[h] == S_stopping && (true)) || (sup[h] == S_migrating_out && (true)) || (sup[h] == S_handing_off && (true)) || (sup[h] == S_incoming && (true)) || (sup[h] == S_cancelling && (true)) || (sup[h] == S_stopping_incoming && (true)) || (sup[h] == S_paused && (true)) || (sup[h] == S_unprotected && (true)) || (sup[h] == S_fencing && (true))) ->
         if :: sup[h] == S_running && (true) -> skip; sup[h] = S_running :: sup[h] == S_stopping && (true) -> skip; sup[h] = S_stopping :: sup[h] == S_migrating_out && (true) -> skip; sup[h] = S_migrating_out :: sup[h] == S_handing_off && (true) -> skip; sup[h] = S_handing_off :: sup[h] == S_incoming && (true) -> skip; sup[h] = S_incoming :: sup[h] == S_cancelling && (true) -> skip; sup[h] = S_cancelling :: sup[h] == S_stopping_incoming && (true) -> skip; sup[h] = S_stopping_incoming :: sup[h] == S_paused && (true) -> skip; sup[h] = S_paused :: sup[h] == S_unprotected && (true) -> skip; sup[h] = S_unprotected :: sup[h] == S_fencing && (true) -> skip; sup[h] = S_fencing :: else -> assert(false) fi; dm[h] = D_migrating_out; mode[h] = M_START;
         printf("STEP host %d: domain idle --get_child--> migrating_out\n", h) }
    :: atomic { dm[h] == D_idle && (mode[h] == M_MIGRATE) && (true) && (cookie != 0 && cookie != h) && (true) ->
         dm[h] = D_idle;
         printf("STEP host %d: domain idle --supervisor_args--> idle\n", h) }
    :: atomic { dm[h] == D_idle && (mode[h] == M_MIGRATE) && (true) && (cookie != 0 && cookie != h) && sup[h] == S_incoming && supmode[h] == mode[h] ->
         dm[h] = D_migrating_in; mode[h] = M_START;
         printf("STEP host %d: domain idle --get_child--> migrating_in\n", h) }
    :: atomic { dm[h] == D_migrating_in && (true) && ((sup[h] == S_incoming && (true) && (true) && (lease == 0 && (gate == 0 || gate == h)))) ->
         if :: sup[h] == S_incoming && (true) && (true) && (lease == 0 && (gate == 0 || gate == h)) -> lease = h; if :: gate == h -> gate = 0 :: else -> skip fi; sup[h] = S_running :: else -> assert(false) fi; dm[h] = D_started; mode[h] = M_START;
         printf("STEP host %d: domain migrating_in --complete_migrate_in--> started\n", h) }
    :: atomic { dm[h] == D_migrating_in && (true) && ((sup[h] == S_incoming && (true) && (true))) ->
         if :: sup[h] == S_incoming && (true) && (true) -> guest[h] = false; sup[h] = S_cancelling :: else -> assert(false) fi; if :: sup[h] == S_running && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_stopping && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_handing_off && (true) -> release(h); sup[h] = S_handed_off :: sup[h] == S_migrating_out && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_cancelling && (true) -> release(h); sup[h] = S_cancelled :: sup[h] == S_incoming && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_stopping_incoming && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_paused && (true) -> release(h); sup[h] = S_lost :: sup[h] == S_unprotected && (true) -> release(h); sup[h] = S_lost :: sup[h] == S_fencing && (true) -> release(h); sup[h] = S_lost :: else -> assert(false) fi; dm[h] = D_cancelled; mode[h] = M_START;
         printf("STEP host %d: domain migrating_in --complete_migrate_in--> cancelled\n", h) }
    :: atomic { dm[h] == D_migrating_in && (sup[h] == S_gone || (sup[h] == S_refused || sup[h] == S_exited || sup[h] == S_handed_off || sup[h] == S_cancelled || sup[h] == S_lost) || (sup[h] == S_running && (true) && (true)) || (sup[h] == S_stopping && (true)) || (sup[h] == S_migrating_out && (true) && (true)) || (sup[h] == S_incoming && (true) && (true)) || (sup[h] == S_stopping_incoming && (true)) || (sup[h] == S_paused && (true) && (true)) || (sup[h] == S_unprotected && (true) && (true)) || (sup[h] == S_fencing && (true))) ->
         if :: (sup[h] == S_running && (true) && (true)) || (sup[h] == S_stopping && (true)) || (sup[h] == S_migrating_out && (true) && (true)) || (sup[h] == S_incoming && (true) && (true)) || (sup[h] == S_stopping_incoming && (true)) || (sup[h] == S_paused && (true) && (true)) || (sup[h] == S_unprotected && (true) && (true)) || (sup[h] == S_fencing && (true)) -> if :: sup[h] == S_running && (true) && (true) -> skip; sup[h] = S_stopping :: sup[h] == S_stopping && (true) -> sup[h] = S_stopping :: sup[h] == S_migrating_out && (true) && (true) -> skip; sup[h] = S_stopping :: sup[h] == S_incoming && (true) && (true) -> skip; sup[h] = S_stopping_incoming :: sup[h] == S_stopping_incoming && (true) -> sup[h] = S_stopping_incoming :: sup[h] == S_paused && (true) && (true) -> guest[h] = false; sup[h] = S_fencing :: sup[h] == S_unprotected && (true) && (true) -> guest[h] = false; sup[h] = S_fencing :: sup[h] == S_fencing && (true) -> sup[h] = S_fencing :: else -> assert(false) fi; guest[h] = false; if :: sup[h] == S_running && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_stopping && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_handing_off && (true) -> release(h); sup[h] = S_handed_off :: sup[h] == S_migrating_out && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_cancelling && (true) -> release(h); sup[h] = S_cancelled :: sup[h] == S_incoming && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_stopping_incoming && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_paused && (true) -> release(h); sup[h] = S_lost :: sup[h] == S_unprotected && (true) -> release(h); sup[h] = S_lost :: sup[h] == S_fencing && (true) -> release(h); sup[h] = S_lost :: else -> assert(false) fi :: else -> skip fi; dm[h] = D_stopped; mode[h] = M_START;
         printf("STEP host %d: domain migrating_in --shutdown--> stopped\n", h) }
    :: atomic { dm[h] == D_cancelled && (sup[h] == S_gone || (sup[h] == S_refused || sup[h] == S_exited || sup[h] == S_handed_off || sup[h] == S_cancelled || sup[h] == S_lost) || (sup[h] == S_running && (true) && (true)) || (sup[h] == S_stopping && (true)) || (sup[h] == S_migrating_out && (true) && (true)) || (sup[h] == S_incoming && (true) && (true)) || (sup[h] == S_stopping_incoming && (true)) || (sup[h] == S_paused && (true) && (true)) || (sup[h] == S_unprotected && (true) && (true)) || (sup[h] == S_fencing && (true))) ->
         if :: (sup[h] == S_running && (true) && (true)) || (sup[h] == S_stopping && (true)) || (sup[h] == S_migrating_out && (true) && (true)) || (sup[h] == S_incoming && (true) && (true)) || (sup[h] == S_stopping_incoming && (true)) || (sup[h] == S_paused && (true) && (true)) || (sup[h] == S_unprotected && (true) && (true)) || (sup[h] == S_fencing && (true)) -> if :: sup[h] == S_running && (true) && (true) -> skip; sup[h] = S_stopping :: sup[h] == S_stopping && (true) -> sup[h] = S_stopping :: sup[h] == S_migrating_out && (true) && (true) -> skip; sup[h] = S_stopping :: sup[h] == S_incoming && (true) && (true) -> skip; sup[h] = S_stopping_incoming :: sup[h] == S_stopping_incoming && (true) -> sup[h] = S_stopping_incoming :: sup[h] == S_paused && (true) && (true) -> guest[h] = false; sup[h] = S_fencing :: sup[h] == S_unprotected && (true) && (true) -> guest[h] = false; sup[h] = S_fencing :: sup[h] == S_fencing && (true) -> sup[h] = S_fencing :: else -> assert(false) fi; guest[h] = false; if :: sup[h] == S_running && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_stopping && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_handing_off && (true) -> release(h); sup[h] = S_handed_off :: sup[h] == S_migrating_out && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_cancelling && (true) -> release(h); sup[h] = S_cancelled :: sup[h] == S_incoming && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_stopping_incoming && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_paused && (true) -> release(h); sup[h] = S_lost :: sup[h] == S_unprotected && (true) -> release(h); sup[h] = S_lost :: sup[h] == S_fencing && (true) -> release(h); sup[h] = S_lost :: else -> assert(false) fi :: else -> skip fi; dm[h] = D_stopped; mode[h] = M_START;
         printf("STEP host %d: domain cancelled --shutdown--> stopped\n", h) }
    :: atomic { dm[h] == D_migrating_in ->
         dm[h] = D_freed; mode[h] = M_START;
         printf("STEP host %d: domain migrating_in --free--> freed\n", h) }
    :: atomic { dm[h] == D_cancelled ->
         dm[h] = D_freed; mode[h] = M_START;
         printf("STEP host %d: domain cancelled --free--> freed\n", h) }
    :: atomic { dm[h] == D_idle && (mode[h] == M_ATTACH) && (true) && (sup[h] == S_incoming) && ((sup[h] == S_running && (true)) || (sup[h] == S_stopping && (true)) || (sup[h] == S_migrating_out && (true)) || (sup[h] == S_handing_off && (true)) || (sup[h] == S_incoming && (true)) || (sup[h] == S_cancelling && (true)) || (sup[h] == S_stopping_incoming && (true)) || (sup[h] == S_paused && (true)) || (sup[h] == S_unprotected && (true)) || (sup[h] == S_fencing && (true))) ->
         if :: sup[h] == S_running && (true) -> skip; sup[h] = S_running :: sup[h] == S_stopping && (true) -> skip; sup[h] = S_stopping :: sup[h] == S_migrating_out && (true) -> skip; sup[h] = S_migrating_out :: sup[h] == S_handing_off && (true) -> skip; sup[h] = S_handing_off :: sup[h] == S_incoming && (true) -> skip; sup[h] = S_incoming :: sup[h] == S_cancelling && (true) -> skip; sup[h] = S_cancelling :: sup[h] == S_stopping_incoming && (true) -> skip; sup[h] = S_stopping_incoming :: sup[h] == S_paused && (true) -> skip; sup[h] = S_paused :: sup[h] == S_unprotected && (true) -> skip; sup[h] = S_unprotected :: sup[h] == S_fencing && (true) -> skip; sup[h] = S_fencing :: else -> assert(false) fi; dm[h] = D_migrating_in; mode[h] = M_START;
         printf("STEP host %d: domain idle --get_child--> migrating_in\n", h) }
    :: atomic { dm[h] == D_started && (!(sup[h] == S_paused || sup[h] == S_unprotected || sup[h] == S_fencing || sup[h] == S_lost)) ->
         dm[h] = D_started; mode[h] = M_START;
         printf("STEP host %d: domain started --check--> started\n", h) }
    :: atomic { dm[h] == D_migrating_out && (!(sup[h] == S_paused || sup[h] == S_unprotected || sup[h] == S_fencing || sup[h] == S_lost)) ->
         dm[h] = D_migrating_out; mode[h] = M_START;
         printf("STEP host %d: domain migrating_out --check--> migrating_out\n", h) }
    :: atomic { dm[h] == D_migrating_in && (!(sup[h] == S_paused || sup[h] == S_unprotected || sup[h] == S_fencing || sup[h] == S_lost)) ->
         dm[h] = D_migrating_in; mode[h] = M_START;
         printf("STEP host %d: domain migrating_in --check--> migrating_in\n", h) }
    :: atomic { dm[h] == D_started && ((sup[h] == S_paused || sup[h] == S_unprotected || sup[h] == S_fencing || sup[h] == S_lost)) ->
         dm[h] = D_failed; mode[h] = M_START;
         printf("STEP host %d: domain started --check--> failed\n", h) }
    :: atomic { dm[h] == D_migrating_out && ((sup[h] == S_paused || sup[h] == S_unprotected || sup[h] == S_fencing || sup[h] == S_lost)) ->
         dm[h] = D_failed; mode[h] = M_START;
         printf("STEP host %d: domain migrating_out --check--> failed\n", h) }
    :: atomic { dm[h] == D_migrating_in && ((sup[h] == S_paused || sup[h] == S_unprotected || sup[h] == S_fencing || sup[h] == S_lost)) ->
         dm[h] = D_failed; mode[h] = M_START;
         printf("STEP host %d: domain migrating_in --check--> failed\n", h) }
    :: atomic { dm[h] == D_started && ((sup[h] == S_paused || sup[h] == S_unprotected || sup[h] == S_fencing || sup[h] == S_lost)) ->
         dm[h] = D_failed; mode[h] = M_START;
         printf("STEP host %d: domain started --lease_lost--> failed\n", h) }
    :: atomic { dm[h] == D_migrating_out && ((sup[h] == S_paused || sup[h] == S_unprotected || sup[h] == S_fencing || sup[h] == S_lost)) ->
         dm[h] = D_failed; mode[h] = M_START;
         printf("STEP host %d: domain migrating_out --lease_lost--> failed\n", h) }
    :: atomic { dm[h] == D_migrating_in && ((sup[h] == S_paused || sup[h] == S_unprotected || sup[h] == S_fencing || sup[h] == S_lost)) ->
         dm[h] = D_failed; mode[h] = M_START;
         printf("STEP host %d: domain migrating_in --lease_lost--> failed\n", h) }
    :: atomic { dm[h] == D_failed ->
         dm[h] = D_failed; mode[h] = M_START;
         printf("STEP host %d: domain failed --check--> failed\n", h) }
    :: atomic { dm[h] == D_failed && (sup[h] == S_gone || (sup[h] == S_refused || sup[h] == S_exited || sup[h] == S_handed_off || sup[h] == S_cancelled || sup[h] == S_lost) || (sup[h] == S_running && (true) && (true)) || (sup[h] == S_stopping && (true)) || (sup[h] == S_migrating_out && (true) && (true)) || (sup[h] == S_incoming && (true) && (true)) || (sup[h] == S_stopping_incoming && (true)) || (sup[h] == S_paused && (true) && (true)) || (sup[h] == S_unprotected && (true) && (true)) || (sup[h] == S_fencing && (true))) ->
         if :: (sup[h] == S_running && (true) && (true)) || (sup[h] == S_stopping && (true)) || (sup[h] == S_migrating_out && (true) && (true)) || (sup[h] == S_incoming && (true) && (true)) || (sup[h] == S_stopping_incoming && (true)) || (sup[h] == S_paused && (true) && (true)) || (sup[h] == S_unprotected && (true) && (true)) || (sup[h] == S_fencing && (true)) -> if :: sup[h] == S_running && (true) && (true) -> skip; sup[h] = S_stopping :: sup[h] == S_stopping && (true) -> sup[h] = S_stopping :: sup[h] == S_migrating_out && (true) && (true) -> skip; sup[h] = S_stopping :: sup[h] == S_incoming && (true) && (true) -> skip; sup[h] = S_stopping_incoming :: sup[h] == S_stopping_incoming && (true) -> sup[h] = S_stopping_incoming :: sup[h] == S_paused && (true) && (true) -> guest[h] = false; sup[h] = S_fencing :: sup[h] == S_unprotected && (true) && (true) -> guest[h] = false; sup[h] = S_fencing :: sup[h] == S_fencing && (true) -> sup[h] = S_fencing :: else -> assert(false) fi; guest[h] = false; if :: sup[h] == S_running && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_stopping && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_handing_off && (true) -> release(h); sup[h] = S_handed_off :: sup[h] == S_migrating_out && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_cancelling && (true) -> release(h); sup[h] = S_cancelled :: sup[h] == S_incoming && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_stopping_incoming && (true) -> release(h); sup[h] = S_exited :: sup[h] == S_paused && (true) -> release(h); sup[h] = S_lost :: sup[h] == S_unprotected && (true) -> release(h); sup[h] = S_lost :: sup[h] == S_fencing && (true) -> release(h); sup[h] = S_lost :: else -> assert(false) fi :: else -> skip fi; dm[h] = D_stopped; mode[h] = M_START;
         printf("STEP host %d: domain failed --shutdown--> stopped\n", h) }
    :: atomic { dm[h] == D_failed ->
         dm[h] = D_freed; mode[h] = M_START;
         printf("STEP host %d: domain failed --free--> freed\n", h) }
    :: atomic { dm[h] == D_idle && (mode[h] == M_ATTACH) && (true) && ((sup[h] == S_paused || sup[h] == S_unprotected || sup[h] == S_fencing)) && ((sup[h] == S_running && (true)) || (sup[h] == S_stopping && (true)) || (sup[h] == S_migrating_out && (true)) || (sup[h] == S_handing_off && (true)) || (sup[h] == S_incoming && (true)) || (sup[h] == S_cancelling && (true)) || (sup[h] == S_stopping_incoming && (true)) || (sup[h] == S_paused && (true)) || (sup[h] == S_unprotected && (true)) || (sup[h] == S_fencing && (true))) ->
         if :: sup[h] == S_running && (true) -> skip; sup[h] = S_running :: sup[h] == S_stopping && (true) -> skip; sup[h] = S_stopping :: sup[h] == S_migrating_out && (true) -> skip; sup[h] = S_migrating_out :: sup[h] == S_handing_off && (true) -> skip; sup[h] = S_handing_off :: sup[h] == S_incoming && (true) -> skip; sup[h] = S_incoming :: sup[h] == S_cancelling && (true) -> skip; sup[h] = S_cancelling :: sup[h] == S_stopping_incoming && (true) -> skip; sup[h] = S_stopping_incoming :: sup[h] == S_paused && (true) -> skip; sup[h] = S_paused :: sup[h] == S_unprotected && (true) -> skip; sup[h] = S_unprotected :: sup[h] == S_fencing && (true) -> skip; sup[h] = S_fencing :: else -> assert(false) fi; dm[h] = D_failed; mode[h] = M_START;
         printf("STEP host %d: domain idle --get_child--> failed\n", h) }
    :: atomic { sup[h] == S_starting && true && (supmode[h] == M_START) && (lease == 0 && (gate == 0 || gate == h)) ->
         lease = h; if :: gate == h -> gate = 0 :: else -> skip fi; sup[h] = S_holding;
         printf("STEP host %d: supervisor starting --begin--> holding\n", h) }
    :: atomic { sup[h] == S_starting && true && (supmode[h] == M_MIGRATE) && (gate == 0) ->
         gate = h; sup[h] = S_reserved;
         printf("STEP host %d: supervisor starting --begin--> reserved\n", h) }
    :: atomic { sup[h] == S_starting && true && ((supmode[h] == M_START && !(lease == 0 && (gate == 0 || gate == h))) || (supmode[h] == M_MIGRATE && !(gate == 0))) ->
         skip; sup[h] = S_refused;
         printf("STEP host %d: supervisor starting --refuse--> refused\n", h) }
    :: atomic { sup[h] == S_holding && true && (true) ->
         guest[h] = true; sup[h] = S_running;
         printf("STEP host %d: supervisor holding --spawn--> running\n", h) }
    :: atomic { sup[h] == S_reserved && true && (true) ->
         guest[h] = true; sup[h] = S_incoming;
         printf("STEP host %d: supervisor reserved --spawn--> incoming\n", h) }
    :: atomic { sup[h] == S_running && !guest[h] && (true) ->
         release(h); sup[h] = S_exited;
         printf("STEP host %d: supervisor running --guest_exited--> exited\n", h) }
    :: atomic { sup[h] == S_stopping && !guest[h] && (true) ->
         release(h); sup[h] = S_exited;
         printf("STEP host %d: supervisor stopping --guest_exited--> exited\n", h) }
    :: atomic { sup[h] == S_handing_off && !guest[h] && (true) ->
         release(h); sup[h] = S_handed_off;
         printf("STEP host %d: supervisor handing_off --guest_exited--> handed_off\n", h) }
    :: atomic { sup[h] == S_migrating_out && !guest[h] && (true) ->
         release(h); sup[h] = S_exited;
         printf("STEP host %d: supervisor migrating_out --guest_exited--> exited\n", h) }
    :: atomic { sup[h] == S_cancelling && !guest[h] && (true) ->
         release(h); sup[h] = S_cancelled;
         printf("STEP host %d: supervisor cancelling --guest_exited--> cancelled\n", h) }
    :: atomic { sup[h] == S_incoming && !guest[h] && (true) ->
         release(h); sup[h] = S_exited;
         printf("STEP host %d: supervisor incoming --guest_exited--> exited\n", h) }
    :: atomic { sup[h] == S_stopping_incoming && !guest[h] && (true) ->
         release(h); sup[h] = S_exited;
         printf("STEP host %d: supervisor stopping_incoming --guest_exited--> exited\n", h) }
    :: atomic { sup[h] == S_paused && !guest[h] && (true) ->
         release(h); sup[h] = S_lost;
         printf("STEP host %d: supervisor paused --guest_exited--> lost\n", h) }
    :: atomic { sup[h] == S_unprotected && !guest[h] && (true) ->
         release(h); sup[h] = S_lost;
         printf("STEP host %d: supervisor unprotected --guest_exited--> lost\n", h) }
    :: atomic { sup[h] == S_fencing && !guest[h] && (true) ->
         release(h); sup[h] = S_lost;
         printf("STEP host %d: supervisor fencing --guest_exited--> lost\n", h) }
    /* the environment: what no table lists */
    :: atomic { dm[h] == D_idle && mode[h] != M_ATTACH && (sup[h] == S_gone || (sup[h] == S_refused || sup[h] == S_exited || sup[h] == S_handed_off || sup[h] == S_cancelled || sup[h] == S_lost)) &&
         (mode[h] != M_MIGRATE || (cookie != 0 && cookie != h)) ->
         sup[h] = S_starting; supmode[h] = mode[h]; guest[h] = false;
         printf("STEP host %d: daemon runs a supervisor (mode %d)\n", h, mode[h]) }
    :: atomic { dm[h] == D_idle && sup[h] == S_refused ->
         sup[h] = S_gone; supmode[h] = M_START;
         printf("STEP host %d: daemon reads the refusal\n", h) }
    :: atomic { !(sup[h] == S_gone || (sup[h] == S_refused || sup[h] == S_exited || sup[h] == S_handed_off || sup[h] == S_cancelled || sup[h] == S_lost)) -> release(h); guest[h] = false; sup[h] = S_gone;
         supmode[h] = M_START;
         printf("STEP host %d: kill -9 of the supervisor (its guest dies)\n", h) }
    :: atomic { guest[h] -> guest[h] = false;
         printf("STEP host %d: the guest dies\n", h) }
    :: atomic { dm[h] != D_freed -> dm[h] = D_idle; mode[h] = M_ATTACH;
         printf("STEP host %d: the daemon restarts (ATTACH)\n", h) }
    :: atomic { dm[h] == D_freed || dm[h] == D_idle ->
         dm[h] = D_idle;
         /* a fresh start or a migration target only where no supervisor runs */
         if :: mode[h] = M_ATTACH :: (sup[h] == S_gone || (sup[h] == S_refused || sup[h] == S_exited || sup[h] == S_handed_off || sup[h] == S_cancelled || sup[h] == S_lost)) -> mode[h] = M_START
            :: (sup[h] == S_gone || (sup[h] == S_refused || sup[h] == S_exited || sup[h] == S_handed_off || sup[h] == S_cancelled || sup[h] == S_lost)) -> mode[h] = M_MIGRATE fi;
         printf("STEP host %d: the daemon makes a new manager (mode %d)\n",
                h, mode[h]) }
    od
}

/* S1: no two hosts' guests execute at once (one exclusive disk). */
#define S1 (!(executing(1) && executing(2)) && !(executing(1) && executing(3)) && !(executing(2) && executing(3)))
/* S3 (with S2): a guest executes only while its supervisor holds the lease. */
#define S3 ((!executing(1) || lease == 1) && (!executing(2) || lease == 2) && (!executing(3) || lease == 3))
/* L1: a completed source holds nothing; a completed target whose guest runs holds it. */
#define L1 ((dm[1] != D_done || (lease != 1 && gate != 1)) && (!(dm[1] == D_started && sup[1] == S_running) || lease == 1) && (dm[2] != D_done || (lease != 2 && gate != 2)) && (!(dm[2] == D_started && sup[2] == S_running) || lease == 2) && (dm[3] != D_done || (lease != 3 && gate != 3)) && (!(dm[3] == D_started && sup[3] == S_running) || lease == 3))

active proctype invariants() {
    atomic { !(S1 && S3 && L1) ->
        if :: !S1 -> printf("VIOLATION S1\n") :: else -> skip fi;
        if :: !S3 -> printf("VIOLATION S3\n") :: else -> skip fi;
        if :: !L1 -> printf("VIOLATION L1\n") :: else -> skip fi;
        assert(S1 && S3 && L1) }
}

init {
    atomic {
        byte i = 1;
        do
        :: i <= N -> dm[i] = D_idle; sup[i] = S_gone; mode[i] = M_START; run host(i); i++
        :: else -> break
        od
    }
}
